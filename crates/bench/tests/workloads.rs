//! Every workload, tiny, against an in-process parley server and the relay: the bench must
//! count right (nothing lost, duplicated or reordered; every count as expected). Correctness
//! only: no assertion here is about speed.

use std::net::SocketAddr;

use parley_bench::conns::ConnsArgs;
use parley_bench::dm::DmArgs;
use parley_bench::fanout::FanoutArgs;
use parley_bench::offline::OfflineArgs;
use parley_bench::report::Figures;
use parley_bench::stall::StallArgs;
use parley_bench::storm::StormArgs;
use parley_bench::{relay, Common, Proto};
use parley_server::{Config, Running};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

struct Parley {
    running: Running,
    _dir: TempDir,
}

/// A parley server as `parley bench` spawns one: no command rate limit, no idle timeout.
async fn parley() -> Parley {
    let dir = tempfile::tempdir().unwrap();
    let running = parley_server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        commands_per_second: 0,
        messages_per_second: 0,
        max_connections_per_ip: 0,
        idle_timeout_ms: 0,
        json_idle_timeout_ms: 0,
        shutdown_timeout_ms: 2_000,
        ..Config::default()
    })
    .await
    .unwrap();
    Parley { running, _dir: dir }
}

async fn the_relay() -> (SocketAddr, CancellationToken) {
    let stop = CancellationToken::new();
    let (addr, _task) = relay::spawn("127.0.0.1:0".parse().unwrap(), stop.clone())
        .await
        .unwrap();
    (addr, stop)
}

fn num(f: &Figures, key: &str) -> u64 {
    f.get(key)
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("{key} in {f:?}"))
}

/// Asserts the counts every workload shares.
fn assert_clean(f: &Figures, delivered_key: &str, expected: u64) {
    assert_eq!(num(f, delivered_key), expected, "{f:?}");
    for key in ["lost", "duplicated", "reordered", "unexpected"] {
        assert_eq!(num(f, key), 0, "{key}: {f:?}");
    }
    assert_eq!(f.get("timed_out").and_then(|v| v.as_bool()), Some(false));
}

fn dm(addr: SocketAddr, proto: Proto, window: u64) -> DmArgs {
    DmArgs {
        common: Common::to(addr),
        pairs: 2,
        messages: 200,
        window,
        size: 32,
        proto,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_counts_every_message_on_every_protocol() {
    let server = parley().await;
    let addr = server.running.addr;
    for (proto, window) in [
        (Proto::Binary, 64),
        (Proto::Binary, 1),
        (Proto::Text, 16),
        (Proto::Json, 16),
        (Proto::Ws, 16),
    ] {
        let f = parley_bench::dm::run(addr, dm(addr, proto, window))
            .await
            .unwrap();
        assert_clean(&f, "delivered", 200);
        assert_eq!(num(&f, "sent"), 200, "{proto:?}: {f:?}");
        assert_eq!(num(&f, "errors"), 0, "{proto:?}: {f:?}");
    }
    server.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_through_the_relay() {
    let (addr, stop) = the_relay().await;
    let f = parley_bench::dm::run(addr, dm(addr, Proto::Binary, 8))
        .await
        .unwrap();
    assert_clean(&f, "delivered", 200);
    assert_eq!(num(&f, "errors"), 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_member() {
    let server = parley().await;
    let addr = server.running.addr;
    // The room's window of 3 is shared 2 + 1 between the publishers.
    let args = |window| FanoutArgs {
        common: Common::to(addr),
        members: 5,
        publishers: 2,
        messages: Some(20),
        window,
        size: 32,
        concurrency: 4,
    };
    let f = parley_bench::fanout::run(addr, args(3)).await.unwrap();
    assert_clean(&f, "deliveries", 5 * 20);
    assert_eq!(num(&f, "sent"), 20);
    let refused = parley_bench::fanout::run(addr, args(1)).await.unwrap_err();
    assert!(refused.to_string().contains("every publisher"), "{refused}");
    server.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conns_log_in_on_parley_and_the_relay() {
    let server = parley().await;
    let (relay, stop) = the_relay().await;
    for (addr, proto) in [
        (server.running.addr, Proto::Binary),
        (server.running.addr, Proto::Text),
        (server.running.addr, Proto::Ws),
        (relay, Proto::Binary),
    ] {
        let args = ConnsArgs {
            common: Common {
                // This process: the figure means nothing here, but the path is exercised.
                pid: Some(std::process::id()),
                ..Common::to(addr)
            },
            conns: 50,
            concurrency: 8,
            sources: 0,
            proto,
            settle_ms: 10,
        };
        let f = parley_bench::conns::run(addr, args).await.unwrap();
        assert_eq!(num(&f, "connected"), 50, "{f:?}");
        assert_eq!(num(&f, "failed"), 0, "{f:?}");
        assert!(f.get("rss_bytes_per_conn").is_some(), "{f:?}");
    }
    stop.cancel();
    server.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_delivers_everything_stored() {
    let server = parley().await;
    let addr = server.running.addr;
    let args = OfflineArgs {
        common: Common::to(addr),
        messages: 500,
        window: 64,
        size: 32,
    };
    let f = parley_bench::offline::run(addr, args).await.unwrap();
    assert_clean(&f, "delivered", 500);
    assert_eq!(num(&f, "errors"), 0);
    server.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_delivers_every_backlog_exactly_once() {
    let server = parley().await;
    let addr = server.running.addr;
    let common = Common {
        pid: Some(std::process::id()),
        ..Common::to(addr)
    };
    let f = parley_bench::storm::run(addr, StormArgs::small(common, 40, 12, 3))
        .await
        .unwrap();
    assert_clean(&f, "delivered", 40 * 12);
    assert_eq!(num(&f, "logins"), 40, "{f:?}");
    assert_eq!(num(&f, "login_failed"), 0, "{f:?}");
    assert_eq!(num(&f, "errors"), 0, "{f:?}");
    assert_eq!(num(&f, "bystander_lost"), 0, "{f:?}");
    assert_eq!(num(&f, "bystander_bad"), 0, "{f:?}");
    assert!(num(&f, "bystander_sent") > 0, "{f:?}");
    for key in ["login_p99_us", "rss_peak_bytes", "rss_hwm_bytes", "seconds"] {
        assert!(f.get(key).is_some(), "{key}: {f:?}");
    }
    server.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_measures_clients_that_never_read() {
    let server = parley().await;
    let addr = server.running.addr;
    let common = Common {
        pid: Some(std::process::id()),
        ..Common::to(addr)
    };
    let (clients, dms, size) = (6, 3, 20_000);
    let f = parley_bench::stall::run(addr, StallArgs::small(common, clients, dms, size))
        .await
        .unwrap();
    assert_eq!(num(&f, "stored"), clients as u64 * dms, "{f:?}");
    assert_eq!(num(&f, "errors"), 0, "{f:?}");
    assert_eq!(num(&f, "history_asked"), clients as u64, "{f:?}");
    assert_eq!(
        num(&f, "cut_off") + num(&f, "kept"),
        clients as u64,
        "{f:?}"
    );
    // Nothing is cut off this small: every DM and every history page reached its client.
    assert_eq!(num(&f, "kept"), clients as u64, "{f:?}");
    let payload = (clients as u64) * (dms + dms) * size as u64;
    assert!(num(&f, "received_bytes") > payload, "{f:?}");
    assert_eq!(num(&f, "offered_bytes"), payload, "{f:?}");
    for key in [
        "rss_before_bytes",
        "rss_peak_bytes",
        "rss_end_bytes",
        "rss_hwm_bytes",
    ] {
        assert!(num(&f, key) > 0, "{key}: {f:?}");
    }
    assert_eq!(num(&f, "bystander_lost"), 0, "{f:?}");
    server.running.stop().await.unwrap();
}
