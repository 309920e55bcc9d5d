//! Whole runs against the fake server: read checks, lost writes, waits, timeouts, progress.

use std::time::Duration;

use semikv_client::ClientConfig;

use super::*;
use crate::bench::config::tests::config;
use crate::testing::FakeServer;

#[tokio::test]
async fn runs_against_the_fake_and_checks_reads() {
    let server = FakeServer::start().await;
    let report = run(config(server.addr())).await.unwrap();
    assert_eq!(report.sets + report.gets, 2000);
    assert!(report.sets > 0 && report.gets > 0);
    assert_eq!(report.failed(), 0, "{:?}", report.errors);
    assert_eq!(report.wrong_values, 0, "{:?}", report.examples);
    assert_eq!(report.stale_reads, 0);
    let json = report.to_json();
    assert_eq!(json["ok"], 2000);
    assert!(report.to_text().contains("ops/s"));
}

#[tokio::test]
async fn a_store_that_loses_writes_is_caught() {
    let server = FakeServer::start().await;
    let cfg = BenchConfig {
        stop: Stop::Requests(400),
        ..config(server.addr())
    };
    // The fake acknowledges but drops every write after the 100th.
    server.forget_writes_after(100);
    let report = run(cfg).await.unwrap();
    // Lost writes show up as reads of older values.
    assert!(report.stale_reads > 0, "lost writes went unnoticed");
    assert_eq!(report.wrong_values, 0);
}

#[tokio::test]
async fn a_write_whose_answer_was_lost_may_have_landed() {
    let server = FakeServer::start().await;
    // Every 10th set is carried out, then its connection closes with it
    // unanswered. One client with one key, mostly reading: the next
    // requests read what such a set wrote.
    server.hang_up_every(10);
    let cfg = BenchConfig {
        clients: 1,
        pipeline: 1,
        keyspace: 1,
        set_weight: 1,
        get_weight: 3,
        stop: Stop::Requests(600),
        ..config(server.addr())
    };
    let report = run(cfg).await.unwrap();
    let lost = report.errors.get("connection_lost").copied().unwrap_or(0);
    assert!(lost >= 5, "{:?}", report.errors);
    assert_eq!(report.sets + report.gets + report.failed(), 600);
    // Read back, a set that landed without an answer is no surprise.
    assert_eq!(report.wrong_values, 0, "{:?}", report.examples);
    // The probe, the first connection and the one after the hang-up.
    assert!(server.connections() >= 3);
}

#[tokio::test]
async fn unavailable_answers_are_waited_out_not_hammered() {
    let server = FakeServer::start().await;
    // Every answer is Unavailable with a 100 ms hint.
    server.unavailable_for(u64::MAX);
    let cfg = BenchConfig {
        clients: 1,
        stop: Stop::Duration(Duration::from_millis(500)),
        ..config(server.addr())
    };
    let report = run(cfg).await.unwrap();
    let unavailable = report.errors.get("Unavailable").copied().unwrap_or(0);
    // Four lanes, each at most one request per hint (plus the first):
    // a slow machine only makes fewer. Without the wait, thousands.
    assert!((4..=4 * 7).contains(&unavailable), "{:?}", report.errors);
    assert_eq!(report.sets + report.gets, 0);
}

#[tokio::test]
async fn requests_without_answers_time_out_on_a_kept_connection() {
    let server = FakeServer::start().await;
    server.swallow();
    let cfg = BenchConfig {
        clients: 1,
        stop: Stop::Requests(12),
        client: ClientConfig {
            request_timeout: Duration::from_millis(100),
            ..ClientConfig::default()
        },
        ..config(server.addr())
    };
    let report = tokio::time::timeout(Duration::from_secs(60), run(cfg))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        report.errors.get("timeout"),
        Some(&12),
        "{:?}",
        report.errors
    );
    assert_eq!(server.requests(), 12);
    // The probe and the one connection the requests used.
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn prefill_writes_every_key_before_the_measured_run() {
    let server = FakeServer::start().await;
    let cfg = BenchConfig {
        set_weight: 0,
        stop: Stop::Requests(400),
        prefill: true,
        ..config(server.addr())
    };
    // Every prefill write but the first is acknowledged and then
    // forgotten: reads that come back empty prove the keys were written
    // (and modelled) before the measured run.
    server.forget_writes_after(1);
    let report = run(cfg).await.unwrap();
    assert_eq!(report.sets, 0, "prefill writes are not counted");
    assert_eq!(report.gets, 400);
    // At most the reads of the one remembered key are fresh.
    assert!(report.stale_reads > 300, "{}", report.stale_reads);
    assert_eq!(report.wrong_values, 0);
}

#[tokio::test]
async fn run_with_progress_reports_while_running() {
    let server = FakeServer::start().await;
    let cfg = BenchConfig {
        stop: Stop::Duration(Duration::from_millis(400)),
        ..config(server.addr())
    };
    let mut samples = Vec::new();
    let mut observer = |p: &Progress| samples.push(*p);
    let report = run_with_progress(cfg, Duration::from_millis(1), &mut observer)
        .await
        .unwrap();
    // Not a timing assertion: the run cannot end before its deadline,
    // hundreds of sampling periods after it began.
    assert!(!samples.is_empty());
    for pair in samples.windows(2) {
        assert!(pair[0].done <= pair[1].done, "{pair:?}");
        assert!(pair[0].elapsed <= pair[1].elapsed, "{pair:?}");
    }
    for p in &samples {
        assert_eq!(p.phase, Phase::Run);
        assert_eq!(p.errors, 0);
        assert!(p.write_gap.is_some());
    }
    // Sampling stops once every request is answered.
    let last = samples.last().unwrap();
    assert!(last.done <= report.sets + report.gets, "{last:?}");
}

#[tokio::test]
async fn unreachable_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    assert!(matches!(
        run(config(addr)).await,
        Err(BenchError::Unreachable { .. })
    ));
}
