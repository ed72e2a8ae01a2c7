//! Several parley nodes on one PostgreSQL and one NATS: real processes on loopback ports.

mod services;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use services::{Nats, Postgres};

/// Sends PING to a nats-server and reads up to its PONG.
fn nats_ping(nats: &Nats) -> std::io::Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", nats.port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    assert!(line.starts_with("INFO "), "{line}");
    (&stream).write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")?;
    line.clear();
    reader.read_line(&mut line)?;
    assert_eq!(line, "PONG\r\n");
    Ok(())
}

/// The harness itself: both services start on free loopback ports, keep what they hold
/// across a restart on the same port, and answer again after it.
#[test]
fn services_start_restart_and_keep_their_data() {
    if !services::available() {
        return;
    }
    let mut pg = Postgres::start();
    pg.psql(
        "parley",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (42)",
    );
    pg.restart();
    assert_eq!(pg.psql("parley", "SELECT v FROM t"), "42");
    pg.kill();
    assert!(!pg.ready(), "a killed server does not answer");

    let mut nats = Nats::start();
    nats_ping(&nats).unwrap();
    nats.stop();
    assert!(
        nats_ping(&nats).is_err(),
        "a stopped nats-server does not answer"
    );
    nats.restart();
    nats_ping(&nats).unwrap();
}
