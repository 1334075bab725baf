//! A small HTTP client for the commands that talk to a running server.

use anyhow::{Context, bail};

/// Where the server is and who calls it: the flags every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerArgs {
    /// Address of the server's HTTP API.
    #[arg(long, env = "TOCSIN_HTTP_ADDR", default_value = "127.0.0.1:4318", global = true)]
    pub(crate) http_addr: String,
    /// API token, for a server started with --auth.
    #[arg(long, env = "TOCSIN_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// PEM CA certificate to trust for a server with TLS (implies https://).
    #[arg(long, env = "TOCSIN_TLS_CA", global = true)]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate and key (one file, or with --tls-key) for a
    /// server that requires client certificates.
    #[arg(long, env = "TOCSIN_TLS_CERT", global = true)]
    pub(crate) tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert, when it is in its own file.
    #[arg(long, env = "TOCSIN_TLS_KEY", global = true)]
    pub(crate) tls_key: Option<std::path::PathBuf>,
}

/// Who acts, for the commands that record it (`--by`): the flag, else
/// `$USER`, `$LOGNAME`, or the name of the process's user in /etc/passwd
/// (cron jobs, containers and systemd units often have no `$USER`).
pub(crate) fn who_acts(by: Option<String>) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(b) = by.or_else(|| from_env("USER")).or_else(|| from_env("LOGNAME")) {
        return Ok(b);
    }
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).context("who acts? give --by NAME")?;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[0].to_string())
    });
    Ok(name.unwrap_or_else(|| format!("uid {uid}")))
}

impl ServerArgs {
    /// Arguments for `http_addr` with a token and no TLS options.
    pub(crate) fn plain(http_addr: String, token: Option<String>) -> ServerArgs {
        ServerArgs { http_addr, token, tls_ca: None, tls_cert: None, tls_key: None }
    }

    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let a = &self.http_addr;
        let tls = self.tls_ca.is_some() || self.tls_cert.is_some();
        let base = if a.starts_with("http://") || a.starts_with("https://") {
            a.clone()
        } else if tls {
            format!("https://{a}")
        } else {
            format!("http://{a}")
        };
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &self.tls_ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading --tls-ca {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--tls-ca {} is not PEM certificates", ca.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(cert) = &self.tls_cert {
            let mut pem = std::fs::read(cert).with_context(|| format!("reading --tls-cert {}", cert.display()))?;
            if let Some(key) = &self.tls_key {
                pem.push(b'\n');
                pem.extend(std::fs::read(key).with_context(|| format!("reading --tls-key {}", key.display()))?);
            }
            let identity = reqwest::Identity::from_pem(&pem)
                .context("--tls-cert (and --tls-key) must hold a PEM certificate and its private key")?;
            builder = builder.identity(identity);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Client { base, token: self.token.clone(), http })
    }
}

pub(crate) struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A request to `path`, with the token if one was given.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> (String, reqwest::RequestBuilder) {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        (url, req)
    }

    /// Sends a request; returns the JSON answer, or the server's error.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let (url, mut req) = self.request(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("while connecting to {url} (is `tocsin serve` running there?)"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("while reading the response")?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            let msg = value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{msg} (HTTP {status})");
        }
        Ok(value)
    }
}

/// `s` as one URL path segment or query value: every byte but letters,
/// digits and `-._~` percent-encoded, so that an argument cannot add a path
/// segment or a query parameter of its own.
pub(crate) fn url_component(s: &str) -> String {
    use std::fmt::Write;
    s.bytes().fold(String::with_capacity(s.len()), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

/// `c` with its control characters escaped (`\n`, `\u{1b}`), for a
/// terminal.
pub(crate) fn shown(c: &str) -> std::borrow::Cow<'_, str> {
    // Control characters, line and paragraph separators, and the
    // bidirectional overrides that reorder what a terminal shows.
    let hidden = |ch: char| {
        ch.is_control() || matches!(ch, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if c.chars().any(hidden) {
        c.chars().map(|ch| if hidden(ch) { ch.escape_default().to_string() } else { ch.to_string() }).collect()
    } else {
        std::borrow::Cow::Borrowed(c)
    }
}

/// Prints rows as an aligned table.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    for line in table_lines(header, rows) {
        println!("{line}");
    }
}

/// The lines of an aligned table. Control characters in cells are shown
/// escaped (`\n`, `\u{1b}`): an alert name or an ack's `by` with a line
/// break in it printed a fake row (review of issue 13), and an escape
/// sequence could rewrite the operator's terminal.
fn table_lines(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| shown(c).into_owned()).collect()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>())];
    out.extend(rows.iter().map(|r| line(r)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_components_cannot_add_segments_or_parameters() {
        assert_eq!(url_component("abc?table=foo"), "abc%3Ftable%3Dfoo");
        assert_eq!(url_component("a/b c&d"), "a%2Fb%20c%26d");
        assert_eq!(url_component("order-17.x_y~"), "order-17.x_y~");
    }

    #[test]
    fn bidirectional_overrides_are_shown_escaped() {
        assert_eq!(shown("evil\u{202E}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(shown("a\u{2028}b"), "a\\u{2028}b");
        assert_eq!(shown("plain"), "plain");
    }

    #[test]
    fn control_characters_in_cells_cannot_make_rows() {
        let rows = vec![vec!["x\n208b9a684d5d95f2  SvcDown   firing".to_string(), "\u{1b}[2Jok".to_string()]];
        let lines = table_lines(&["BY", "NAME"], &rows);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].contains("x\\n208b9a684d5d95f2") && lines[1].contains("\\u{1b}[2Jok"), "{lines:?}");
    }
}
