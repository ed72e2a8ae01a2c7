//! `parley chat` end to end: the real binary in a real terminal (tmux), against a real
//! server on 127.0.0.1 port 0. Keys go in with `send-keys`; the screen comes out with
//! `capture-pane`. Every wait polls the screen, bounded in time; none sleeps to synchronise.
//!
//! tmux must be installed (`.ci/run` installs it). Without it these tests fail when
//! `CI` or `PARLEY_REQUIRE_TMUX` is set, and say loudly that they did not run otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parley_client::{Endpoint, Link, LinkEvent, LinkOptions, LinkStatus, Target};
use parley_server::{Config, Running};
use tempfile::TempDir;

/// How long any screen may take to show what a test waits for (a debug build on a shared
/// machine).
const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse";

/// Whether tmux is there; if not, fails under CI and warns otherwise.
fn tmux_available() -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let required =
            std::env::var_os("CI").is_some() || std::env::var_os("PARLEY_REQUIRE_TMUX").is_some();
        assert!(!required, "tmux is not installed: the terminal client's end-to-end tests cannot run (apt-get install tmux)");
        eprintln!("WARNING: tmux is not installed; the `parley chat` end-to-end tests did NOT run");
    }
    found
}

/// A server on 127.0.0.1: started on port 0, stopped and started again on the same port.
struct Server {
    running: Option<Running>,
    addr: SocketAddr,
    dir: TempDir,
}

fn config(dir: &Path, listen: SocketAddr) -> Config {
    Config {
        listen,
        data_dir: dir.to_path_buf(),
        shutdown_timeout_ms: 2_000,
        // Cheap hashing keeps logins fast; production uses the defaults.
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        ..Config::default()
    }
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let running = parley_server::start(config(dir.path(), "127.0.0.1:0".parse().unwrap()))
            .await
            .expect("server starts");
        Server {
            addr: running.addr,
            running: Some(running),
            dir,
        }
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("clean stop");
        }
    }

    async fn start_again(&mut self) {
        let running = parley_server::start(config(self.dir.path(), self.addr))
            .await
            .expect("server restarts on its port");
        self.running = Some(running);
    }
}

/// One `parley chat` in a tmux session of its own server (`-L`), killed on drop.
struct Chat {
    socket: String,
    name: String,
    /// Config and downloads of this user.
    home: TempDir,
}

static SESSIONS: AtomicUsize = AtomicUsize::new(0);

impl Chat {
    /// Starts `parley chat` for `user` (registering it) in a `width`×`height` terminal.
    fn start(server: SocketAddr, user: &str, extra: &[&str], width: u16, height: u16) -> Chat {
        let home = tempfile::tempdir().unwrap();
        let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let socket = format!("parley-test-{}-{n}", std::process::id());
        let name = user.to_string();
        let downloads = home.path().join("downloads");
        let mut command = vec![
            "env".to_string(),
            format!("XDG_CONFIG_HOME={}", home.path().join("config").display()),
            format!("PARLEY_PASSWORD={PASSWORD}"),
            "TZ=UTC".to_string(),
            "LANG=C.UTF-8".to_string(),
            env!("CARGO_BIN_EXE_parley").to_string(),
            "chat".to_string(),
            server.to_string(),
            "--user".to_string(),
            user.to_string(),
            "--device".to_string(),
            "tmux".to_string(),
            "--register".to_string(),
            "--download-dir".to_string(),
            downloads.display().to_string(),
        ];
        command.extend(extra.iter().map(|s| s.to_string()));
        // The pane stays after the client exits, with its status, so a crash can be read.
        let line = format!("{}; echo \"[exited $?]\"; sleep 600", shell_words(&command));
        let chat = Chat { socket, name, home };
        let out = chat.tmux(&[
            "new-session",
            "-d",
            "-s",
            &chat.name,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &line,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        chat
    }

    fn tmux(&self, args: &[&str]) -> Output {
        // -u: UTF-8 whatever the locale (a bare CI machine may have none set).
        Command::new("tmux")
            .arg("-u")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("run tmux")
    }

    /// The screen, as text.
    fn screen(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-t", &self.name]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` (literally) and Enter.
    fn type_line(&self, text: &str) {
        let out = self.tmux(&["send-keys", "-t", &self.name, "-l", text]);
        assert!(out.status.success());
        self.key("Enter");
    }

    fn key(&self, key: &str) {
        let out = self.tmux(&["send-keys", "-t", &self.name, key]);
        assert!(out.status.success());
    }

    /// Polls the screen until `ok` holds; fails with the last screen after `WAIT`.
    async fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{}: waited {WAIT:?} for {what}; the screen:\n{screen}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the screen shows `text`.
    async fn wait_text(&self, text: &str) -> String {
        self.wait_for(text, |s| s.contains(text)).await
    }

    fn downloads(&self) -> PathBuf {
        self.home.path().join("downloads")
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        // Our own tmux server (its own socket): ending it ends the client in it.
        let _ = self.tmux(&["kill-server"]);
    }
}

/// `words` as one shell command line.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How many times `needle` is on the screen.
fn count(screen: &str, needle: &str) -> usize {
    screen.matches(needle).count()
}

/// A logged-in link for the test itself, to send as a second user without a terminal.
async fn link(server: SocketAddr, user: &str) -> (Link, tokio::task::JoinHandle<()>) {
    let mut options = LinkOptions::new(Endpoint::tcp(server.to_string()), user, "test");
    options.password = Some(PASSWORD.to_string());
    options.register = true;
    options.backoff_first = Duration::from_millis(50);
    let (link, mut events) = Link::spawn(options);
    let deadline = Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .expect("the link comes online in time")
            .expect("the link runs");
        match event {
            LinkEvent::Status(LinkStatus::Online) => break,
            LinkEvent::Status(LinkStatus::Stopped(e)) => panic!("{user}: {e}"),
            _ => {}
        }
    }
    // Its events keep being drained, as the link requires.
    let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
    (link, drain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_users_chat_in_a_room_and_directly() {
    if !tmux_available() {
        return;
    }
    let server = Server::start().await;
    let alice = Chat::start(server.addr, "alice", &[], 90, 24);
    let bob = Chat::start(server.addr, "bob", &[], 90, 24);
    alice.wait_text(" online │").await;
    bob.wait_text(" online │").await;

    alice.type_line("/join lobby");
    alice.wait_text("joined #lobby").await;
    bob.type_line("/join #lobby");
    bob.wait_text("joined #lobby").await;

    bob.type_line("hello alice 👋 こんにちは");
    alice.wait_text("bob │ hello alice 👋 こんにちは").await;
    // Bob's own line was confirmed: no longer pending.
    bob.wait_for("bob's message stored", |s| {
        s.contains("bob │ hello alice 👋 こんにちは") && !s.contains("(sending…)")
    })
    .await;
    alice.type_line("hi bob, how are you?");
    let screen = bob.wait_text("alice │ hi bob, how are you?").await;
    assert_eq!(count(&screen, "hello alice"), 1, "{screen}");
    // Presence: both online in the room's title.
    alice.wait_text("● alice ● bob").await;

    // A direct message lands in its own conversation, counted as unread.
    alice.type_line("/dm bob just between us");
    let screen = bob
        .wait_for("the DM in the sidebar with its count", |s| {
            s.lines()
                .any(|l| l.starts_with("● alice") && l.contains(" 1 │"))
        })
        .await;
    assert!(
        !screen.contains("just between us"),
        "shown in the room: {screen}"
    );
    bob.key("M-3");
    bob.wait_text("alice │ just between us").await;

    // The screen for the record (the closing note shows one).
    println!("--- bob's screen ---\n{}", bob.screen());

    // Narrowed to 40 columns the sidebar goes; the conversation is laid out again.
    let out = bob.tmux(&["resize-window", "-t", &bob.name, "-x", "40", "-y", "15"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let narrow = bob
        .wait_for("the narrow layout", |s| s.starts_with("alice  ● online"))
        .await;
    assert!(narrow.lines().all(|l| l.chars().count() <= 40), "{narrow}");
    assert!(narrow.contains("alice │ just between us"), "{narrow}");
    alice.type_line("/quit");
    alice.wait_text("[exited 0]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_sent_by_one_downloads_byte_identical_for_the_other() {
    if !tmux_available() {
        return;
    }
    let server = Server::start().await;
    let alice = Chat::start(server.addr, "alice", &[], 100, 24);
    let bob = Chat::start(server.addr, "bob", &[], 100, 24);
    alice.wait_text(" online │").await;
    bob.wait_text(" online │").await;
    alice.type_line("/join files");
    alice.wait_text("joined #files").await;
    bob.type_line("/join files");
    bob.wait_text("joined #files").await;

    // A few chunks' worth of bytes that are not text.
    let bytes: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let path = alice.home.path().join("report.bin");
    std::fs::write(&path, &bytes).unwrap();
    alice.type_line(&format!("/send {} the numbers", path.display()));
    alice.wait_text("sent report.bin").await;
    bob.wait_text("alice │ [file] report.bin (293.0 KB, application/octet-stream)")
        .await;

    bob.type_line("/get");
    let saved = bob.downloads().join("report.bin");
    bob.wait_for("the download saved and verified", |s| {
        s.contains("saved ") && s.contains("verified)")
    })
    .await;
    assert_eq!(std::fs::read(&saved).unwrap(), bytes, "byte-identical");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_server_restart_the_client_shows_what_arrived_meanwhile_once() {
    if !tmux_available() {
        return;
    }
    let mut server = Server::start().await;
    let (alice, _drain) = link(server.addr, "alice").await;
    let room = Target::Room("#news".into());
    alice
        .retry(|c| async move { c.join("#news").await })
        .await
        .unwrap();
    // Bob waits 5 s (at least 3.75 with the jitter) before reconnecting: the messages
    // below are stored while he is away, which the server confirms after they are.
    let bob = Chat::start(server.addr, "bob", &["--reconnect-ms", "5000"], 90, 24);
    bob.wait_text(" online │").await;
    bob.type_line("/join news");
    bob.wait_text("joined #news").await;
    alice
        .send(&room, "before the restart".into(), alice.fresh_time())
        .await
        .unwrap();
    bob.wait_text("alice │ before the restart").await;

    server.stop().await;
    bob.wait_text("reconnecting in").await;
    server.start_again().await;
    for i in 1..=3 {
        let text = format!("meanwhile {i}");
        alice
            .send(&room, text.into(), alice.fresh_time())
            .await
            .unwrap();
    }
    // All three are stored (their OKs came) and bob has no session yet: they can only
    // reach him as the catch-up of his next login, not as live pushes.
    let watched = alice.watch(vec!["bob".into()]).await.unwrap();
    let online: Vec<_> = watched
        .iter()
        .map(|u| (u.name.to_vec(), u.online))
        .collect();
    assert_eq!(
        online,
        [(b"bob".to_vec(), false)],
        "bob came back before the three were stored: raise --reconnect-ms"
    );
    let screen = bob
        .wait_for("the three messages after reconnecting", |s| {
            s.contains("meanwhile 3") && s.contains(" online │")
        })
        .await;
    // In order, each once, the one from before the restart not repeated.
    let at = |needle: &str| {
        screen
            .find(needle)
            .unwrap_or_else(|| panic!("{needle}: {screen}"))
    };
    assert!(at("before the restart") < at("meanwhile 1"));
    assert!(at("meanwhile 1") < at("meanwhile 2") && at("meanwhile 2") < at("meanwhile 3"));
    for needle in [
        "before the restart",
        "meanwhile 1",
        "meanwhile 2",
        "meanwhile 3",
    ] {
        assert_eq!(count(&screen, needle), 1, "{needle} once:\n{screen}");
    }
    // And it stays that way: a live message after them comes once, after them.
    alice
        .send(&room, "live again".into(), alice.fresh_time())
        .await
        .unwrap();
    let screen = bob.wait_text("alice │ live again").await;
    assert_eq!(count(&screen, "meanwhile 2"), 1, "{screen}");
    assert!(screen.find("meanwhile 3").unwrap() < screen.find("live again").unwrap());
    println!("--- bob's screen after the restart ---\n{screen}");
}
