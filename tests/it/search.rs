//! `matches()` over persisted logs: token filters skip the blocks of a
//! segment that cannot hold the searched words, without changing answers.

use tocsin_proto::v1::WriteLogsRequest;

use crate::server::TestServer;
use crate::util::*;

const READ: &str = "tocsin_query_token_blocks_read_total";
const SKIPPED: &str = "tocsin_query_token_blocks_skipped_total";

async fn count(server: &TestServer, query: &str) -> i64 {
    let rows = server.sql(&format!("SELECT count(*) AS n FROM logs WHERE matches(message, '{query}')")).await;
    rows[0]["n"].as_i64().unwrap_or_else(|| panic!("{rows:?}"))
}

/// (blocks read, blocks skipped) by the searches `run` makes.
async fn blocks<F: Future<Output = ()>>(server: &TestServer, run: F) -> (f64, f64) {
    let (read, skipped) = (server.metric(READ).await, server.metric(SKIPPED).await);
    run.await;
    (server.metric(READ).await - read, server.metric(SKIPPED).await - skipped)
}

#[tokio::test]
async fn token_filters_skip_blocks_without_the_words_and_answers_stay_exact() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut server = TestServer::start_in(&data, &[]);
    let mut client = server.client().await;
    // 40,000 events of one series: five blocks of 8,192 rows (the last one
    // shorter), the rare token in the third and the fifth.
    const N: i64 = 40_000;
    let rare = [20_000, N - 1];
    for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
        let events = chunk
            .iter()
            .map(|&i| {
                let message = if rare.contains(&i) {
                    format!("quota exceeded ERR-7731-QUOTA for tenant t-{i}")
                } else {
                    format!("GET /v/{:08x}.ts 200 in {} ms", (i * 2_654_435_761) % 4_294_967_291, i % 400)
                };
                log(T0 + i * 1_000_000, "media-edge", "info", &message, "")
            })
            .collect();
        let resp = client
            .write_logs(WriteLogsRequest { database: String::new(), stream: String::new(), events })
            .await
            .expect("write_logs")
            .into_inner();
        assert_eq!(resp.accepted_rows, 10_000);
    }
    server.persist().await;

    let (read, skipped) = blocks(&server, async { assert_eq!(count(&server, "ERR-7731-QUOTA").await, 2) }).await;
    assert_eq!((read, skipped), (2.0, 3.0), "the two blocks with the token are read");
    // Two blocks hold `quota` (none both words); only one holds every word
    // of the phrase.
    let (read, skipped) = blocks(&server, async {
        assert_eq!(count(&server, "quota AND ms").await, 0);
        assert_eq!(count(&server, "\"exceeded ERR-7731-QUOTA for tenant t-20000\"").await, 1);
    })
    .await;
    assert_eq!((read, skipped), (3.0, 7.0));
    // LIKE needs the pattern's words bounded on both sides (`7731` here);
    // ILIKE and NOT LIKE read everything.
    let (read, skipped) = blocks(&server, async {
        let n = server.sql("SELECT count(*) AS n FROM logs WHERE message LIKE '%ERR-7731-QUOTA%'").await;
        assert_eq!(n[0]["n"], 2);
        let n = server.sql("SELECT count(*) AS n FROM logs WHERE message LIKE 'quota exceeded %'").await;
        assert_eq!(n[0]["n"], 2);
    })
    .await;
    // One word alone may be a false positive (1% per block): one is here.
    assert_eq!(read + skipped, 10.0);
    assert!(read >= 4.0 && skipped >= 5.0, "read {read}, skipped {skipped}");
    let (_, skipped) = blocks(&server, async {
        let n = server.sql("SELECT count(*) AS n FROM logs WHERE message ILIKE '%err-7731-quota%'").await;
        assert_eq!(n[0]["n"], 2);
        let n = server.sql("SELECT count(*) AS n FROM logs WHERE message NOT LIKE '%ERR-7731-QUOTA%'").await;
        assert_eq!(n[0]["n"], N - 2);
    })
    .await;
    assert_eq!(skipped, 0.0);
    // NOT, OR with a common word and words everywhere leave every block to read.
    let (read, skipped) = blocks(&server, async {
        assert_eq!(count(&server, "NOT quota").await, N - 2);
        assert_eq!(count(&server, "quota OR ms").await, N);
        assert_eq!(count(&server, "get AND ts").await, N - 2);
    })
    .await;
    assert_eq!(skipped, 0.0, "read {read}");
    // Rows still in the write buffer are searched as before.
    let late = log(T0 + N * 1_000_000, "media-edge", "error", "late ERR-7731-QUOTA", "");
    client
        .write_logs(WriteLogsRequest { database: String::new(), stream: String::new(), events: vec![late] })
        .await
        .expect("write_logs");
    assert_eq!(count(&server, "ERR-7731-QUOTA").await, 3);
    let rows = server
        .sql("SELECT message FROM logs WHERE matches(message, 'err-7731-quota') AND level = 'info' ORDER BY ts")
        .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0]["message"].as_str().is_some_and(|m| m.ends_with("t-20000")), "{rows:?}");

    // A query that does not parse is the same clean error over segments as
    // over the write buffer (it was a 500 from inside the Parquet reader).
    let (status, body) = server.sql_raw("SELECT count(*) FROM logs WHERE matches(message, 'quota OR')").await;
    let body = body.to_string();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#"matches(): cannot parse \"quota OR\""#) && !body.contains("Parquet"), "{body}");
    let (status, body) = server.sql_raw("SELECT count(*) FROM logs WHERE matches(message, message)").await;
    let body = body.to_string();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("the query must be a constant string") && !body.contains("Parquet"), "{body}");
    // `=` needs every word of the text.
    let (read, skipped) = blocks(&server, async {
        let n = server
            .sql("SELECT count(*) AS n FROM logs WHERE message = 'quota exceeded ERR-7731-QUOTA for tenant t-20000'")
            .await;
        assert_eq!(n[0]["n"], 1);
    })
    .await;
    assert_eq!((read, skipped), (1.0, 4.0));

    // A new process reads the filters from the segment's footer.
    server.kill9();
    let server = TestServer::start_in(&data, &[]);
    let (read, skipped) = blocks(&server, async { assert_eq!(count(&server, "ERR-7731-QUOTA").await, 3) }).await;
    assert_eq!((read, skipped), (2.0, 3.0));
}
