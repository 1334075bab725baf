//! `tocsin sql "SELECT ..."`: runs a statement over the HTTP API.

use anyhow::{Context, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// An aligned table.
    Table,
    Csv,
    Json,
    Jsonl,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Config {
    /// The SQL statement.
    sql: String,
    #[command(flatten)]
    server: super::client::ServerArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Database to run in [default: public].
    #[arg(long, env = "TOCSIN_DATABASE")]
    database: Option<String>,
}

pub(crate) fn run(c: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(query(c))
}

async fn query(c: Config) -> anyhow::Result<()> {
    let wire = match c.format {
        Format::Table => "arrow",
        Format::Csv => "csv",
        Format::Json => "json",
        Format::Jsonl => "jsonl",
    };
    let (url, req) = c.server.client()?.request(reqwest::Method::POST, "/api/v1/sql");
    let mut body = serde_json::json!({ "sql": c.sql, "format": wire });
    if let Some(db) = &c.database {
        body["database"] = serde_json::Value::String(db.clone());
    }
    let resp = req
        .json(&body)
        .send()
        .await
        .with_context(|| format!("while connecting to {url} (is `tocsin serve` running there?)"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.context("while reading the response")?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("{msg} (HTTP {status})");
    }
    if c.format == Format::Table {
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .context("while decoding the Arrow result")?;
        let batches = reader.collect::<Result<Vec<_>, _>>().context("while decoding the Arrow result")?;
        let batches = batches.iter().map(escaped).collect::<Result<Vec<_>, _>>()?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
        println!("{rows} row{}", if rows == 1 { "" } else { "s" });
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)?;
        if !bytes.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// `batch` with the control characters of its text columns escaped, as
/// the other tables show them: a line break in a value (an alert name
/// posted through the Alertmanager API) printed a fake row, and an escape
/// sequence reached the terminal.
fn escaped(batch: &arrow::record_batch::RecordBatch) -> anyhow::Result<arrow::record_batch::RecordBatch> {
    use arrow::array::{Array, AsArray, StringArray};
    use arrow::datatypes::DataType;
    let text = |t: &DataType| match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => matches!(**v, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
        _ => false,
    };
    if !batch.schema().fields().iter().any(|f| text(f.data_type())) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if text(f.data_type()) {
            let plain = arrow::compute::cast(c, &DataType::Utf8)?;
            let values: StringArray =
                plain.as_string::<i32>().iter().map(|v| v.map(|s| super::client::shown(s).into_owned())).collect();
            fields.push(f.as_ref().clone().with_data_type(DataType::Utf8));
            columns.push(std::sync::Arc::new(values) as std::sync::Arc<dyn Array>);
        } else {
            fields.push(f.as_ref().clone());
            columns.push(std::sync::Arc::clone(c));
        }
    }
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
    Ok(arrow::record_batch::RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cells_are_printed_escaped() {
        use arrow::array::{DictionaryArray, Int32Array, StringArray};
        use arrow::datatypes::Int32Type;
        let names = StringArray::from(vec![Some("Ctl\nX"), None, Some("ok")]);
        let tags: DictionaryArray<Int32Type> = vec!["a\u{1b}[31m", "b", "b"].into_iter().collect();
        let batch = arrow::record_batch::RecordBatch::try_from_iter([
            ("name", std::sync::Arc::new(names) as _),
            ("tag", std::sync::Arc::new(tags) as _),
            ("n", std::sync::Arc::new(Int32Array::from(vec![1, 2, 3])) as _),
        ])
        .expect("batch");
        let text = arrow::util::pretty::pretty_format_batches(&[escaped(&batch).expect("escaped")])
            .expect("format")
            .to_string();
        assert_eq!(text.lines().count(), 7, "three rows, no more: {text}");
        assert!(text.contains("Ctl\\nX") && text.contains("a\\u{1b}[31m"), "{text}");
    }
}
