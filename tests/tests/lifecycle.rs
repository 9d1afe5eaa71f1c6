//! Lifecycle through a running server: the background expiry sweep of a block with a
//! `sweep_interval`, and its metrics. (The sweep's rules, on every backend, are in
//! `ops_conformance.rs`; `gc` and `delete --prefix` in `service/tests/cli.rs`.)

use std::time::{Duration, Instant};

use resultstore_client::{Put, Stored};
use resultstore_e2e::{TestServer, base_config};

/// The value of `name{block="..."}` in the server's metrics.
fn metric(s: &TestServer, name: &str, block: &str) -> f64 {
    let handle = s.handle();
    let text = handle.metrics.render(&handle.live);
    let prefix = format!("{name}{{block=\"{block}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_block_with_a_sweep_interval_sweeps_itself() {
    let s = TestServer::start_with(|dir| {
        format!("{}\n[blocks.\"memory/swept\"]\nurl = \"memory://\"\nsweep_interval = \"200ms\"\n", base_config(dir))
    })
    .await;
    let put = |key: &str| Put::json("1").serializer("json").storage("memory/swept").key(key);
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    s.client.put(put("gone").expires_at(past)).await.unwrap();
    let Stored::Reference(_) = s.client.put(put("kept")).await.unwrap() else { panic!("a reference") };
    s.client.put(put("later").expires_in(Duration::from_secs(3600))).await.unwrap();

    // The sweep runs on its own: wait for its first finished run (bounded), not for a time.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&s, "resultstore_sweep_runs_total", "memory/swept") < 1.0 {
        assert!(Instant::now() < deadline, "no sweep finished within 20 s of a 200 ms interval");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!s.client.exists("memory/swept", "gone").await.unwrap());
    assert!(s.client.exists("memory/swept", "kept").await.unwrap());
    assert!(s.client.exists("memory/swept", "later").await.unwrap());
    assert_eq!(metric(&s, "resultstore_swept_results_total", "memory/swept"), 1.0);
    assert!(metric(&s, "resultstore_swept_bytes_total", "memory/swept") > 0.0);
    assert_eq!(metric(&s, "resultstore_sweep_errors_total", "memory/swept"), 0.0);
    // Blocks without an interval are never swept.
    assert_eq!(metric(&s, "resultstore_sweep_runs_total", "memory/default"), 0.0);
}
