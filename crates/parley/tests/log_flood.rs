//! Log flooding (issue 20, item 7), read from the server's stderr: a connection that sends
//! thousands of bad frames, or hundreds of connections that each do, write a bounded number
//! of log lines, and the lines say how many similar ones they left out.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::{parley_command, Proc};
use parley_client::BinaryClient;
use tokio::io::AsyncWriteExt;

/// Response code UnknownCommand: the answer to a frame with an unknown key.
const UNKNOWN_COMMAND: u16 = 0x09;

fn serve(dir: &std::path::Path) -> (Proc, SocketAddr) {
    let dir = dir.to_str().expect("utf-8 temp path");
    let args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", dir];
    let mut proc = Proc::spawn(parley_command(args));
    let addr = proc.wait_for_start()[0].addr;
    (proc, addr)
}

/// A frame of the unknown key 0x7f7f with correlation id `cid`: answered, and logged as a
/// bad frame.
fn unknown_key(cid: u32) -> [u8; 11] {
    let mut frame = [0, 0, 0, 7, 1, 0x7f, 0x7f, 0, 0, 0, 0];
    frame[7..].copy_from_slice(&cid.to_be_bytes());
    frame
}

/// The log lines that contain `needle`.
fn lines_with(logs: &str, needle: &str) -> Vec<String> {
    let lines = logs.lines().filter(|l| l.contains(needle));
    lines.map(str::to_string).collect()
}

/// The count in a line that says how many similar lines were left out: `suppressed=N`.
fn suppressed(line: &str) -> u64 {
    let Some((_, rest)) = line.split_once("suppressed=") else {
        return 0;
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("a count")
}

#[tokio::test]
async fn thousands_of_bad_frames_from_one_connection_write_a_bounded_number_of_lines() {
    const BAD: u32 = 5_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let (proc, addr) = serve(dir.path());
    let started = Instant::now();
    let mut c = BinaryClient::connect(addr).await.expect("connect");
    let flood: Vec<u8> = (1..=BAD).flat_map(unknown_key).collect();
    c.send_raw(&flood).await.unwrap();
    for cid in 1..=BAD {
        assert_eq!(c.expect_response(cid).await.unwrap(), UNKNOWN_COMMAND);
    }
    c.stream().shutdown().await.unwrap();
    assert!(c.recv_or_eof().await.unwrap().is_none(), "closed");
    proc.wait_for_log("similar lines suppressed");
    let seconds = started.elapsed().as_secs() + 1;

    let logs = proc.logs();
    let lines = lines_with(&logs, "bad frame");
    // A burst of 10, then one a second, and the summary at the end.
    let bound = 10 + seconds as usize + 1;
    assert!(
        lines.len() <= bound,
        "{} lines about bad frames in {seconds} s (at most {bound}):\n{}",
        lines.len(),
        lines.join("\n")
    );
    // Nothing is lost from the count: each line written stands for one frame, and the
    // others are counted in the lines that say how many were left out.
    let written = lines
        .iter()
        .filter(|l| !l.contains("similar lines suppressed"));
    let counted: u64 = lines.iter().map(|l| suppressed(l)).sum();
    assert_eq!(
        written.count() as u64 + counted,
        u64::from(BAD),
        "{}",
        lines.join("\n")
    );
    drop(proc);
}

#[tokio::test]
async fn many_connections_with_a_bad_frame_each_write_a_bounded_number_of_lines() {
    const CONNECTIONS: u32 = 400;
    let dir = tempfile::tempdir().expect("temp dir");
    let (proc, addr) = serve(dir.path());
    let started = Instant::now();
    for cid in 1..=CONNECTIONS {
        let mut c = BinaryClient::connect(addr).await.expect("connect");
        c.send_raw(&unknown_key(cid)).await.unwrap();
        assert_eq!(c.expect_response(cid).await.unwrap(), UNKNOWN_COMMAND);
    }
    proc.wait_for_log("similar suppressed");
    let seconds = started.elapsed().as_secs() + 1;

    let logs = proc.logs();
    let lines = lines_with(&logs, "bad frame");
    // Over every connection: a burst of 100, then ten a second.
    let bound = 100 + 10 * seconds as usize;
    assert!(
        lines.len() <= bound && lines.len() < CONNECTIONS as usize,
        "{} lines about bad frames in {seconds} s (at most {bound})",
        lines.len()
    );
    assert!(
        lines.iter().any(|l| suppressed(l) > 0),
        "a line says how many were left out:\n{}",
        lines.join("\n")
    );
    drop(proc);
}
