//! Smoke test of the load generator against a real in-process server: a short fan-out and a
//! handful of idle connections. Figures are checked for presence and consistency only (no
//! wall-clock thresholds): this is a benchmark, not a timed test.

use nself_realtime::store::{RoomType, Visibility};
use nself_realtime_bench::connections::{self, ConnOpts};
use nself_realtime_bench::load::{self, Kind, LoadOpts};
use nself_realtime_tests::TestHost;
use nself_realtime_tests::token::TEST_SECRET;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_message_and_reports_figures() {
    let host = TestHost::start(&[]).await;
    for i in 0..2 {
        host.create_room(
            &format!("bench-{i}"),
            RoomType::Channel,
            Visibility::Public,
            None,
        )
        .await;
    }
    let mut opts = LoadOpts::new(&host.url(), TEST_SECRET);
    opts.rooms = 2;
    opts.room_size = 4;
    opts.senders = Some(2);
    opts.rate = 20.0;
    opts.duration = 2;
    opts.warmup = 0;
    opts.drain = 10;
    let report = load::run(Kind::Fanout, &opts).await.expect("fanout run");
    assert_eq!(report.clients, 8);
    assert_eq!(report.steps.len(), 1);
    let step = &report.steps[0];
    assert!(step.sent > 0, "{step:?}");
    assert_eq!(step.expected, step.sent * 4, "{step:?}");
    assert_eq!(
        step.delivered, step.expected,
        "every message:new counted: {step:?}"
    );
    assert_eq!(step.completeness, 1.0);
    assert_eq!(step.acks_ok, step.sent, "{step:?}");
    assert_eq!(step.acks_err + step.acks_missing, 0, "{step:?}");
    assert_eq!(step.latency.count, step.delivered);
    assert_eq!(step.ack_rtt.count, step.sent);
    assert!(step.latency.max_ms >= step.latency.p50_ms);
    assert!(step.delivered_per_s > 0.0);
    // The server runs in this process: its pid is found by its port.
    assert_eq!(report.server_pid, Some(std::process::id()));
    assert!(step.server.rss_kib > 0);
    let json = serde_json::to_value(&report).expect("report serializes");
    assert!(json["steps"][0]["latency"]["p99_ms"].is_number());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_all_answer_the_ping_event() {
    let host = TestHost::start(&[]).await;
    let mut opts = ConnOpts::new(&host.url(), TEST_SECRET, 20);
    opts.checkpoints = vec![10];
    opts.client.source_ips = 2;
    let r = connections::run(&opts).await.expect("connections run");
    assert_eq!(r.connected, 20, "{r:?}");
    assert_eq!(r.failures, 0, "{r:?}");
    assert_eq!(r.checkpoints.len(), 2);
    assert_eq!(r.dropped, 0);
    assert_eq!(r.pings_sent, 20);
    assert_eq!(r.pongs, 20, "every client got its pong: {r:?}");
    assert!(r.checkpoints.iter().all(|c| c.rss_kib > 0));
}
