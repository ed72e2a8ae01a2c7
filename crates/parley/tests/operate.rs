//! What an operator runs, as real processes: `serve --log-format json`, `parley admin`,
//! `parley backup` and `parley restore` against a running `parley serve`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{parley_command, Proc};
use serde_json::Value;

const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const PASSWORD: &str = "correct-horse-battery";

/// `serve` on 127.0.0.1 port 0 with its data in `dir` and cheap password hashing.
fn serve_in(dir: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let dir = dir.to_str().unwrap();
    let args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", dir];
    let mut cmd = parley_command(args.iter().chain(extra));
    cmd.env("PARLEY_ARGON2_MEMORY_KIB", "1024")
        .env("PARLEY_ARGON2_ITERATIONS", "1");
    let mut proc = Proc::spawn(cmd);
    let addr = proc.wait_for_start()[0].addr;
    (proc, addr)
}

/// Runs `parley ARGS` to its end with `stdin`; its exit status and stdout.
fn run(args: &[&str], stdin: &str) -> (bool, String) {
    let mut cmd: Command = parley_command(args);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || !stderr.is_empty(),
        "parley {args:?} failed silently"
    );
    (out.status.success(), stdout + &stderr)
}

/// A text connection: sends `line`, returns the next line the server writes.
struct Text(BufReader<TcpStream>);

impl Text {
    fn connect(addr: SocketAddr) -> Text {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Text(BufReader::new(stream))
    }

    fn ask(&mut self, line: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let mut answer = String::new();
        self.0.read_line(&mut answer).unwrap();
        answer.trim_end().to_string()
    }
}

/// With `--log-format json` every line is a JSON object, and every line about a session
/// names its id, its peer and, once it logged in, its user.
#[test]
fn json_logs_name_the_session_peer_and_user() {
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, addr) = serve_in(dir.path(), &["--log-format", "json"]);
    let mut c = Text::connect(addr);
    assert_eq!(c.ask("LOGIN alice"), "OK");
    assert_eq!(c.ask("QUIT"), "BYE");
    let mut binary = TcpStream::connect(addr).unwrap();
    // A binary frame too short to hold its version and key: a bad frame; it closes.
    binary.write_all(&[0, 0, 0, 2, 1, 0]).unwrap();
    proc.wait_for_log("disconnected\",\"session\":2");
    proc.signal(libc::SIGTERM);
    assert!(proc.wait_exit(STOP_TIMEOUT).success());

    let lines: Vec<Value> = proc
        .logs()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let about = |message: &str| -> Vec<&Value> {
        let fields = lines.iter().map(|l| &l["fields"]);
        fields.filter(|f| f["message"] == message).collect()
    };
    let logged_in = about("logged in");
    assert_eq!(logged_in.len(), 1, "{lines:?}");
    let session = &logged_in[0]["session"];
    for line in about("logged in").into_iter().chain(about("disconnected")) {
        assert!(
            line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
    }
    let ended = about("disconnected");
    let alice = ended.iter().find(|l| &l["session"] == session).unwrap();
    assert_eq!(alice["user"], "alice");
    let bad: Vec<&Value> = about("bad frame, closing")
        .into_iter()
        .chain(about("bad frame"))
        .collect();
    assert!(!bad.is_empty(), "{lines:?}");
    assert!(
        bad[0]["peer"].is_string() && bad[0]["session"].is_u64(),
        "{}",
        bad[0]
    );
}

/// An operator creates an account with `parley admin`, backs the running server up with
/// `parley backup`, and restores it with `parley restore` into a new directory, where the
/// account logs in.
#[test]
fn admin_backup_and_restore_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut proc, addr) = serve_in(&data, &[]);
    let data = data.to_str().unwrap();
    let create = ["admin", "--data-dir", data, "users", "create", "bob"];
    let (ok, out) = run(&create, &format!("{PASSWORD}\n"));
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "created: bob");
    let mut c = Text::connect(addr);
    assert_eq!(c.ask(&format!("LOGIN bob {PASSWORD}")), "OK");
    let (ok, out) = run(&["admin", "--data-dir", data, "sessions", "list"], "");
    assert!(ok && out.contains("bob") && out.contains("text"), "{out}");

    let backup = dir.path().join("backup");
    let backup = backup.to_str().unwrap();
    let (ok, out) = run(&["backup", "--data-dir", data, "--out", backup], "");
    assert!(ok, "{out}");
    assert!(out.contains("users: 1"), "{out}");
    let (ok, out) = run(&["backup", "--data-dir", data, "--out", backup], "");
    assert!(!ok && out.contains("is not empty"), "{out}");
    proc.signal(libc::SIGTERM);
    assert!(proc.wait_exit(STOP_TIMEOUT).success());

    let restored = dir.path().join("restored");
    let restored = restored.to_str().unwrap();
    let restore = ["restore", "--from", backup, "--data-dir", restored];
    let (ok, out) = run(&restore, "");
    assert!(ok, "{out}");
    assert!(out.contains("1 users"), "{out}");
    let (mut proc, addr) = serve_in(Path::new(restored), &[]);
    let mut c = Text::connect(addr);
    assert_eq!(c.ask(&format!("LOGIN bob {PASSWORD}")), "OK");
    proc.signal(libc::SIGTERM);
    assert!(proc.wait_exit(STOP_TIMEOUT).success());
}
