//! Bad input gets a clear error naming the problem; the server stays up and
//! accepted data stays intact.

use bytes::{Buf, BufMut};
use serde_json::json;
use tocsin_proto::v1::{WriteLogsRequest, WriteResponse, WriteSeriesRequest};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::server::TestServer;
use crate::util::*;

/// Sends arbitrary bytes as the request message and decodes a WriteResponse.
#[derive(Default)]
struct RawCodec;
struct RawEncoder;
struct RespDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = WriteResponse;
    type Encoder = RawEncoder;
    type Decoder = RespDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RespDecoder {
        RespDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RespDecoder {
    type Item = WriteResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<WriteResponse>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        prost::Message::decode(bytes).map(Some).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

async fn raw_call(server: &TestServer, method: &str, body: Vec<u8>) -> Result<WriteResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = format!("/tocsin.v1.Ingest/{method}").parse().expect("path");
    grpc.unary(tonic::Request::new(body), path, RawCodec).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn grpc_rejects_bad_items_one_by_one_and_keeps_the_good_ones() {
    let server = TestServer::start();
    let mut client = server.client().await;
    client
        .write_rows(rows("cpu", vec![row_series(&[("host", "a")], vec![T0], vec![i64s("usage", vec![1])])]))
        .await
        .expect("seed");

    let resp = client
        .write_rows(rows(
            "cpu",
            vec![
                row_series(&[("host", "b")], vec![T0], vec![i64s("usage", vec![2])]),
                // Type conflict: usage is an integer field.
                row_series(&[("host", "c")], vec![T0], vec![f64s("usage", vec![2.5])]),
                // Invalid label name.
                row_series(&[("bad\"name", "x")], vec![T0], vec![i64s("usage", vec![3])]),
                // Lengths differ.
                row_series(&[("host", "d")], vec![T0, T0 + SEC], vec![i64s("usage", vec![4])]),
                // Before 1970.
                row_series(&[("host", "e")], vec![-1], vec![i64s("usage", vec![5])]),
                // `ts` is reserved.
                row_series(&[("ts", "x")], vec![T0], vec![i64s("usage", vec![6])]),
                // A tag used as a field.
                row_series(&[], vec![T0], vec![strs("host", vec!["z"])]),
                row_series(&[("host", "f")], vec![T0 + SEC], vec![i64s("usage", vec![7])]),
            ],
        ))
        .await
        .expect("write_rows")
        .into_inner();
    assert_eq!(resp.accepted_rows, 2);
    let reasons: Vec<(u32, String)> = resp.rejected.iter().map(|r| (r.index, r.reason.clone())).collect();
    assert_eq!(reasons.len(), 6, "{reasons:?}");
    let expect = [
        (1, "field \"usage\" is integer in table \"cpu\"; this write has it as float"),
        (2, "invalid column name \"bad\\\"name\""),
        (3, "field \"usage\" has 1 values but the series has 2 timestamps"),
        (4, "timestamp -1 is out of range"),
        (5, "column name \"ts\" is reserved"),
        (6, "column \"host\" is a tag in table \"cpu\"; this write uses it as a string field"),
    ];
    for ((i, reason), (ei, ereason)) in reasons.iter().zip(expect) {
        assert_eq!(*i, ei);
        assert!(reason.contains(ereason), "item {i}: {reason:?} should contain {ereason:?}");
    }
    let got = server.sql("SELECT host, usage FROM cpu ORDER BY host").await;
    assert_eq!(
        got,
        vec![json!({"host": "a", "usage": 1}), json!({"host": "b", "usage": 2}), json!({"host": "f", "usage": 7})]
    );

    // Invalid table name: every item of the request is rejected, by index.
    let resp = client
        .write_rows(rows("drop/table", vec![row_series(&[], vec![T0], vec![i64s("v", vec![1])])]))
        .await
        .expect("write")
        .into_inner();
    assert_eq!(resp.accepted_rows, 0);
    assert!(resp.rejected[0].reason.contains("invalid table name \"drop/table\""), "{:?}", resp.rejected);

    // Empty requests are an error for the whole call.
    let err = client.write_series(WriteSeriesRequest::default()).await.expect_err("empty");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("no series"), "{}", err.message());
    let err = client.write_logs(WriteLogsRequest::default()).await.expect_err("empty");
    assert!(err.message().contains("no events"));

    // A bad database name.
    let mut req = rows("cpu", vec![row_series(&[], vec![T0], vec![i64s("usage", vec![1])])]);
    req.database = "system".into();
    let err = client.write_rows(req).await.expect_err("reserved database");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("\"system\""), "{}", err.message());

    // Malformed protobuf: a field header promising more bytes than follow.
    let err = raw_call(&server, "WriteRows", vec![0x0a, 0xff, 0x01, 0x00]).await.expect_err("malformed");
    assert!(err.message().to_lowercase().contains("decode"), "{:?}", err);

    // The server is still up and the data intact.
    let got = server.sql("SELECT count(*) AS n FROM cpu").await;
    assert_eq!(got, vec![json!({"n": 3})]);
}

#[tokio::test]
async fn oversized_requests_are_refused_with_the_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(&cfg, "[limits]\nmax_request_bytes = 65536\n").expect("config");
    let server = TestServer::start_in(&tmp.path().join("data"), &["--config", cfg.to_str().expect("utf8")]);
    let mut client = server.client().await;
    let n = 20_000;
    let big = rows(
        "cpu",
        vec![row_series(&[("host", "a")], (0..n).map(|i| T0 + i).collect(), vec![i64s("v", vec![1; n as usize])])],
    );
    let err = client.write_rows(big).await.expect_err("too large");
    assert!(err.message().contains("65536"), "{err:?}");
    // HTTP bodies have the same limit.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/v1/sql", server.http))
        .body(format!("{{\"sql\": \"SELECT '{}'\"}}", "x".repeat(70_000)))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 413);
    // Normal requests still work.
    let ok = client
        .write_rows(rows("cpu", vec![row_series(&[("host", "a")], vec![T0], vec![i64s("v", vec![1])])]))
        .await
        .expect("small write");
    assert_eq!(ok.into_inner().accepted_rows, 1);
}

#[tokio::test]
async fn http_errors_are_json_with_a_reason() {
    let server = TestServer::start();
    let (status, body) = server.sql_raw("SELEC 1").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap_or_default().contains("SELEC"), "{body}");
    let (status, body) = server.sql_raw("SELECT nope FROM nowhere").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap_or_default().contains("nowhere"), "{body}");
    let (status, body) = server.sql_raw("CREATE TABLE x (a INT)").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.sql_raw("").await;
    assert_eq!(status, 400, "{body}");
    let http = reqwest::Client::new();
    let resp = http.post(format!("http://{}/api/v1/sql", server.http)).body("SELECT 1").send().await.expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert!(body["error"].as_str().unwrap_or_default().contains("must be JSON"), "{body}");
    let resp = http
        .post(format!("http://{}/api/v1/sql", server.http))
        .json(&json!({"sql": "SELECT 1", "format": "xml"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    // Formats by field and by Accept header.
    let resp = http
        .post(format!("http://{}/api/v1/sql", server.http))
        .header("accept", "text/csv")
        .json(&json!({"sql": "SELECT 1 AS a, 'x' AS b"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.text().await.expect("text"), "a,b\n1,x\n");
    let resp = http
        .post(format!("http://{}/api/v1/sql", server.http))
        .json(&json!({"sql": "SELECT 1 AS a UNION ALL SELECT 2 ORDER BY a", "format": "jsonl"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.text().await.expect("text"), "{\"a\":1}\n{\"a\":2}\n");
    let resp = http
        .post(format!("http://{}/api/v1/sql", server.http))
        .json(&json!({"sql": "SELECT 42 AS a", "format": "arrow"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.headers()["content-type"], "application/vnd.apache.arrow.stream");
    let bytes = resp.bytes().await.expect("bytes");
    let batches: Vec<_> = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .expect("ipc")
        .collect::<Result<_, _>>()
        .expect("batches");
    assert_eq!(batches[0].num_rows(), 1);
    // Health and metrics.
    let health: serde_json::Value =
        http.get(format!("http://{}/health", server.http)).send().await.expect("get").json().await.expect("json");
    assert_eq!(health["status"], "ok");
    let metrics =
        http.get(format!("http://{}/metrics", server.http)).send().await.expect("get").text().await.expect("text");
    assert!(metrics.contains("tocsin_queries_total"), "{metrics}");
    assert!(metrics.contains("tocsin_query_errors_total 3"), "{metrics}");
    assert!(metrics.contains("tocsin_wal_fsyncs_total"), "{metrics}");
    // The statements above spent time in each phase of starting.
    for phase in ["plan", "optimize", "physical_plan"] {
        let spent = server.metric(&format!("tocsin_query_phase_seconds_total{{phase=\"{phase}\"}}")).await;
        assert!(spent > 0.0, "{phase}: {spent}");
    }
    // Client errors found by review 2 that answered 500: a pattern that is
    // no regex (compiled by the optimizer), a list column asked for as CSV.
    let (status, body) = server.sql_raw("SELECT 1 WHERE 'a' ~ '('").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("regex parse error"), "{body}");
    let resp = http
        .post(format!("http://{}/api/v1/sql", server.http))
        .header("accept", "text/csv")
        .json(&json!({"sql": "SELECT array_agg(x) AS l FROM (VALUES (1), (2)) AS t(x)"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert!(body["error"].as_str().unwrap_or_default().contains("CSV cannot hold column \"l\""), "{body}");
}

#[tokio::test]
async fn new_series_past_the_limit_are_refused_and_active_ones_still_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(&cfg, "[limits]\nmax_series_per_table = 3\n").expect("config");
    let server = TestServer::start_in(&tmp.path().join("data"), &["--config", cfg.to_str().expect("utf8")]);
    let mut client = server.client().await;
    let series = |hosts: std::ops::Range<i64>, t: i64| {
        rows(
            "m",
            hosts.map(|h| row_series(&[("host", &format!("h{h}"))], vec![T0 + t], vec![i64s("v", vec![h])])).collect(),
        )
    };
    let resp = client.write_rows(series(0..5, 0)).await.expect("write").into_inner();
    assert_eq!(resp.accepted_rows, 3);
    assert_eq!(resp.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), vec![3, 4]);
    assert!(resp.rejected[0].reason.contains("already has 3 active series"), "{:?}", resp.rejected);
    let resp = client.write_rows(series(0..3, 1)).await.expect("write").into_inner();
    assert_eq!((resp.accepted_rows, resp.rejected.len()), (3, 0), "active series keep writing");
    assert_eq!(server.sql("SELECT count(*) AS n FROM m").await, vec![serde_json::json!({"n": 6})]);
    let metrics = reqwest::get(format!("http://{}/metrics", server.http)).await.expect("metrics");
    assert!(metrics.text().await.expect("text").contains("tocsin_storage_active_series 3"));
}
