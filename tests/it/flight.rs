//! Arrow Flight SQL through the real binary with arrow-flight's own client:
//! a query sent with GetFlightInfo only (no DoGet), as some clients send an
//! INSERT, still writes; statements stream their result; errors say why.

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::Channel;

use crate::server::TestServer;

pub(crate) async fn client(server: &TestServer) -> FlightSqlServiceClient<Channel> {
    let channel =
        Channel::from_shared(format!("http://{}", server.grpc)).expect("uri").connect().await.expect("connect");
    FlightSqlServiceClient::new(channel)
}

#[tokio::test]
async fn an_insert_sent_as_a_query_writes_when_planned() {
    let server = TestServer::start();
    let mut c = client(&server).await;
    let info = c
        .execute("INSERT INTO f (ts, host, v) VALUES (to_timestamp(1700000000), 'a', 1.5)".into(), None)
        .await
        .expect("get flight info");
    // No DoGet: the rows are there already.
    assert_eq!(server.sql("SELECT host, v FROM f").await, vec![serde_json::json!({"host": "a", "v": 1.5})]);
    // Its ticket answers the count.
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let batches: Vec<arrow::array::RecordBatch> =
        c.do_get(ticket).await.expect("do_get").try_collect().await.expect("read");
    assert_eq!(batches[0].num_rows(), 1);
    assert_eq!(batches[0].schema().field(0).name(), "count");

    // A query streams what it selects, tags as plain strings.
    let info = c.execute("SELECT host, v FROM f".into(), None).await.expect("query info");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let batches: Vec<arrow::array::RecordBatch> =
        c.do_get(ticket).await.expect("do_get").try_collect().await.expect("read");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert_eq!(batches[0].schema().field(0).data_type(), &arrow::datatypes::DataType::Utf8);

    // Bad SQL: the message names the problem.
    let err = c.execute("SELECT nope FROM f".into(), None).await.expect_err("bad sql");
    assert!(err.to_string().contains("nope"), "{err}");
    // A value that fails while the statement runs is the client's error
    // too (INVALID_ARGUMENT), not the server's (INTERNAL).
    let info = c.execute("SELECT CAST(host AS BIGINT) AS n FROM f".into(), None).await.expect("planned");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let stream = c.do_get(ticket).await.expect("do_get");
    let err = stream.try_collect::<Vec<_>>().await.expect_err("a cast that fails");
    let status = match &err {
        arrow_flight::error::FlightError::Tonic(s) => s.code(),
        other => panic!("not a status: {other}"),
    };
    assert_eq!(status, tonic::Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("Int64"), "{err}");
}

/// A Flight SQL stream still being read while compaction and retention
/// replace the segments it reads and the purge runs (no grace period): the
/// stream reads to the end, and the replaced files go once it is dropped.
#[tokio::test]
async fn a_flight_stream_outlives_compaction_and_purge_underneath_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(&cfg, "[compaction]\ngrace = \"0s\"\ninterval = \"1h\"\n").expect("config");
    let server = TestServer::start_in(&tmp.path().join("data"), &["--config", cfg.to_str().expect("utf8")]);
    for part in 0..2 {
        // 2023: a cold partition, merged whole by the next round.
        let body: String = (0..30_000)
            .map(|i| format!("m,host=a v={i}i {}\n", 1_700_000_000_000_000_000i64 + part * 30_000 + i))
            .collect();
        let (status, text) = crate::hardening::write_lines(&server, body).await;
        assert_eq!(status, 204, "{text}");
        server.persist().await;
    }
    let mut c = client(&server).await;
    let info = c.execute("SELECT v FROM m".into(), None).await.expect("info");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let mut stream = c.do_get(ticket).await.expect("do_get");
    let first = stream.try_next().await.expect("read").expect("a first batch");
    let stats = server.compact().await;
    assert_eq!(stats["inputs"], serde_json::json!(2), "{stats}");
    let mut rows = first.num_rows();
    while let Some(batch) = stream.try_next().await.expect("the stream reads on after the purge") {
        rows += batch.num_rows();
    }
    assert_eq!(rows, 60_000);
}
