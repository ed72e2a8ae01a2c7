//! `parley chat` in scripts: `--send`, `--tail` and `--logout` as child processes against a
//! real server on 127.0.0.1 port 0, and the exit status each situation gets (the list in
//! `parley chat --help`). Every wait is bounded; children are killed by their PID.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parley_client::{Endpoint, Link, LinkEvent, LinkOptions, LinkStatus, Target};
use parley_server::{Config, Running};
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse";

async fn server() -> (Running, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        shutdown_timeout_ms: 2_000,
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        ..Config::default()
    };
    (parley_server::start(config).await.unwrap(), dir)
}

/// `parley chat ADDR --user USER ARGS…` with its config in `home` and no terminal.
fn chat(
    home: &Path,
    addr: SocketAddr,
    user: &str,
    password: Option<&str>,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_parley"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PARLEY_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("XDG_CONFIG_HOME", home)
        .env("TZ", "UTC")
        .args(["chat", &addr.to_string(), "--user", user, "--timeout", "20"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = password {
        cmd.env("PARLEY_PASSWORD", p);
    }
    cmd
}

/// Runs a command to its end (off the runtime's threads, so the server keeps serving).
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run parley"))
        .await
        .unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn link(addr: SocketAddr, user: &str) -> (Link, mpsc::Receiver<String>) {
    let mut options = LinkOptions::new(Endpoint::tcp(addr.to_string()), user, "test");
    options.password = Some(PASSWORD.to_string());
    options.register = true;
    let (link, mut events) = Link::spawn(options);
    let (tx, rx) = mpsc::channel();
    let (online_tx, online_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut online = Some(online_tx);
        while let Some(event) = events.recv().await {
            match event {
                LinkEvent::Status(LinkStatus::Online) => {
                    if let Some(o) = online.take() {
                        let _ = o.send(());
                    }
                }
                LinkEvent::Message(m) => {
                    let _ = tx.send(String::from_utf8_lossy(&m.message).into_owned());
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(WAIT, online_rx)
        .await
        .unwrap()
        .unwrap();
    (link, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_says_what_happened_in_its_exit_status() {
    let (running, _data) = server().await;
    let addr = running.addr;
    let home = tempfile::tempdir().unwrap();
    let (_bob, bob_gets) = link(addr, "bob").await;
    let device = ["--device", "script"];

    // Stored: 0, and bob has it.
    let mut args = vec!["--register", "--send", "bob", "hello from a script"];
    args.extend(device);
    let out = run(chat(home.path(), addr, "alice", Some(PASSWORD), &args)).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let got = tokio::task::spawn_blocking(move || bob_gets.recv_timeout(WAIT))
        .await
        .unwrap();
    assert_eq!(got.unwrap(), "hello from a script");

    // The device token was kept, private: no password needed the second time.
    let token = home
        .path()
        .join(format!("parley/tokens/alice@{addr}#script"));
    let mode = std::fs::metadata(&token)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut args = vec!["--send", "@bob", "again"];
    args.extend(device);
    let out = run(chat(home.path(), addr, "alice", None, &args)).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // Refused by the server: 5, and why.
    let mut args = vec!["--send", "nobody", "x"];
    args.extend(device);
    let out = run(chat(home.path(), addr, "alice", None, &args)).await;
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(stderr(&out).contains("no such user"), "{}", stderr(&out));
    let mut args = vec!["--send", "#nowhere", "x"];
    args.extend(device);
    let out = run(chat(home.path(), addr, "alice", None, &args)).await;
    assert_eq!(code(&out), 5, "{}", stderr(&out));

    // A wrong password on another device: 4.
    let other = tempfile::tempdir().unwrap();
    let out = run(chat(
        other.path(),
        addr,
        "alice",
        Some("wrong password"),
        &["--send", "bob", "x"],
    ))
    .await;
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    // No password at all, and no terminal to ask on: 4.
    let out = run(chat(
        other.path(),
        addr,
        "alice",
        None,
        &["--send", "bob", "x"],
    ))
    .await;
    assert_eq!(code(&out), 4, "{}", stderr(&out));

    // Logout forgets the token here and revokes it on the server: a copy kept aside no
    // longer logs in, and without a password that is a refused login.
    let kept = std::fs::read(&token).unwrap();
    let mut args = vec!["--logout"];
    args.extend(device);
    let out = run(chat(home.path(), addr, "alice", None, &args)).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!token.exists());
    std::fs::write(&token, kept).unwrap();
    let mut args = vec!["--send", "bob", "x"];
    args.extend(device);
    let out = run(chat(home.path(), addr, "alice", None, &args)).await;
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("token was refused"),
        "{}",
        stderr(&out)
    );
    assert!(!token.exists(), "a refused token is forgotten");

    // Nobody listening: 3.
    running.stop().await.unwrap();
    let out = run(chat(
        home.path(),
        addr,
        "alice",
        Some(PASSWORD),
        &["--send", "bob", "x", "--reconnect-ms", "20"],
    ))
    .await;
    assert_eq!(code(&out), 3, "{}", stderr(&out));
}

/// A child process, killed (by PID) if the test fails before it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_a_conversation_as_lines_until_told_to_stop() {
    let (running, _data) = server().await;
    let addr = running.addr;
    let home = tempfile::tempdir().unwrap();
    let (bob, _) = link(addr, "bob").await;
    let (alice, _) = link(addr, "alice").await;
    for l in [&alice, &bob] {
        l.retry(|c| async move { c.join("#ops").await })
            .await
            .unwrap();
    }

    let mut cmd = chat(
        home.path(),
        addr,
        "alice",
        Some(PASSWORD),
        &["--tail", "#ops"],
    );
    let mut child = Proc(cmd.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The tail's device is new: it starts with what comes next. Send until the first one
    // shows (the tail may still be logging in), then one with two lines.
    let room = Target::Room("#ops".into());
    let deadline = Instant::now() + WAIT;
    let first = loop {
        assert!(Instant::now() < deadline, "the tail printed nothing");
        bob.send(&room, "ping".into(), bob.fresh_time())
            .await
            .unwrap();
        let got = tokio::task::block_in_place(|| lines.recv_timeout(Duration::from_millis(500)));
        if let Ok(line) = got {
            break line;
        }
    };
    assert!(first.ends_with(" #ops <bob> ping"), "{first}");
    assert_eq!(
        first.len(),
        "2026-01-01 00:00:00 #ops <bob> ping".len(),
        "{first}"
    );
    bob.send(&room, "deploy\ndone".into(), bob.fresh_time())
        .await
        .unwrap();
    let mut rest = Vec::new();
    while rest.len() < 2 {
        let line = tokio::task::block_in_place(|| lines.recv_timeout(WAIT)).expect("a line");
        if !line.ends_with("<bob> ping") {
            rest.push(line);
        }
    }
    assert!(rest[0].ends_with(" #ops <bob> deploy"), "{rest:?}");
    assert!(rest[1].ends_with(" #ops <bob> done"), "{rest:?}");

    // SIGTERM: a clean end, status 0.
    let pid = child.0.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the tail did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
}
