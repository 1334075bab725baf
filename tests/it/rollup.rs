//! Roll-ups through the real binary: closed buckets of a table are written
//! to another table as soon as the server runs, exactly once across restarts,
//! and computed again when late rows land in them.

use serde_json::json;

use crate::server::TestServer;
use crate::util::*;

const HOUR: i64 = 3600 * SEC;

#[tokio::test]
async fn closed_buckets_are_rolled_up_at_start_and_not_again_after_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as i64;
    let hour = now.div_euclid(HOUR) * HOUR;
    {
        // Two full hours before the current one, every 10 minutes.
        let mut server = TestServer::start_in(&dir, &[]);
        let ts: Vec<i64> = (0..12).map(|k| hour - 2 * HOUR + k * 600 * SEC).collect();
        let mut client = server.client().await;
        let resp = client
            .write_rows(rows("cpu", vec![row_series(&[("host", "a")], ts, vec![i64s("usage", (0..12).collect())])]))
            .await
            .expect("write")
            .into_inner();
        assert_eq!(resp.accepted_rows, 12);
        assert!(server.terminate().success());
    }
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(
        &cfg,
        "[[rollup]]\nname = \"cpu_1h\"\nsource = \"public.cpu\"\ntarget = \"public.cpu_1h\"\n\
         bucket = \"1h\"\ndelay = \"1s\"\nbackfill = \"3h\"\naggregates = [\"avg\", \"max\", \"count\"]\n",
    )
    .expect("config");
    let cfg = cfg.to_str().expect("utf8").to_string();
    let expected = vec![
        json!({"host": "a", "usage_avg": 2.5, "usage_max": 5, "usage_count": 6}),
        json!({"host": "a", "usage_avg": 8.5, "usage_max": 11, "usage_count": 6}),
    ];
    let q = "SELECT host, usage_avg, usage_max, usage_count FROM cpu_1h ORDER BY ts";
    let mut server = TestServer::start_in(&dir, &["--config", &cfg]);
    assert_eq!(server.sql_until(q, |r| r.len() >= 2).await, expected);
    let metrics = reqwest::get(format!("http://{}/metrics", server.http)).await.expect("metrics");
    assert!(metrics.text().await.expect("text").contains("tocsin_rollup_rows_total 2"));
    assert!(server.terminate().success());

    let server = TestServer::start_in(&dir, &["--config", &cfg]);
    // Two complete rounds after the restart, and neither wrote a bucket.
    server.metric_until("tocsin_rollup_checks_total", 2.0).await;
    assert_eq!(server.metric("tocsin_rollup_runs_total").await, 0.0, "a closed bucket was rolled up again");
    assert_eq!(server.sql(q).await, expected, "a restart resumes after the newest bucket");
    assert!(!server.log_text().contains("roll-up failed"), "{}", server.log_text());

    // A late row lands in the newest computed bucket (within `late`, 1 h by
    // default): that bucket is computed again, replaced, not added to.
    let mut client = server.client().await;
    let late = vec![row_series(&[("host", "a")], vec![hour - 30 * 60 * SEC + 1], vec![i64s("usage", vec![100])])];
    let resp = client.write_rows(rows("cpu", late)).await.expect("write").into_inner();
    assert_eq!(resp.accepted_rows, 1);
    let recomputed = vec![
        expected[0].clone(),
        json!({"host": "a", "usage_avg": (51.0 + 100.0) / 7.0, "usage_max": 100, "usage_count": 7}),
    ];
    // Roll-ups run every 10 s.
    let mut got = Vec::new();
    for _ in 0..60 {
        got = server.sql(q).await;
        if got == recomputed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(got, recomputed, "{}", server.log_text());
    assert!(server.metric("tocsin_rollup_recomputed_buckets_total").await >= 1.0);
    assert!(!server.log_text().contains("failed"), "{}", server.log_text());
}
