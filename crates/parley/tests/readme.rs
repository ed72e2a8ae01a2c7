//! README.md, tried as a newcomer tries it: every block marked `example=NAME` is read from
//! the README itself and run as written, in the README's order, against the real binary
//! started the way the README starts it (in a directory of its own, so `./parley-data` and
//! `dev-tls/` are the README's relative paths). Only the port numbers change: every server
//! listens on port 0 and the examples' ports are mapped to the ones it got.
//!
//! A session block is a transcript: `$ ncat HOST PORT` (or `$ openssl s_client ...`), then
//! the lines typed and the lines the server writes, interleaved. Which is which needs no
//! marking: after each line it types, the test sends a `PING` (`{"command":"PING"}` for JSON)
//! and takes everything before its `PONG` as the server's answer, which must be the next
//! lines of the transcript, no more and no fewer. `<name>` in a server line matches one word
//! (or the part of one up to what follows it) and keeps it; `<name>` in a typed line is
//! replaced by what was kept (a token, for example).
//!
//! `python3` and `openssl` run the Python and TLS examples. Where one is missing, that
//! example is skipped with a note on stderr, unless `PARLEY_README_TOOLS=required` (CI sets
//! it after installing both).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{parley_command, Proc};

/// Longest wait for one line of an answer (a debug build hashes passwords slowly).
const LINE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest run of a helper program (`python3`, `parley cert`).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The examples, in the order the README shows them and this test runs them.
const EXAMPLES: &[&str] = &[
    "quick-start",
    "ncat",
    "accounts",
    "resume",
    "python",
    "python-output",
    "python-output-alice-online",
    "serve-json",
    "json",
    "tls",
    "tls-session",
];

#[test]
fn every_readme_example_works_as_shown_in_order() {
    let readme = examples(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"));
    let marked: Vec<&str> = readme.keys().map(String::as_str).collect();
    let known: BTreeSet<&str> = EXAMPLES.iter().copied().collect();
    assert_eq!(
        marked.iter().copied().collect::<BTreeSet<_>>(),
        known,
        "README.md's example= blocks and the ones this test runs differ: update both"
    );
    let block = |name: &str| readme[name].as_slice();

    let mut newcomer = Newcomer::new();

    // Quick start: the server in one terminal (the tests are what runs this).
    let quick = block("quick-start");
    let default = parley_server::Config::default().listen;
    assert!(
        quick[0].contains(&default.to_string()),
        "the quick start says where the server listens ({default}): {:?}",
        quick[0]
    );
    assert!(quick.iter().any(|l| l.starts_with("cargo test")));
    newcomer.run_cargo(&quick[0]);

    // Each session is over (and the server has seen it end) before the next begins, as
    // with a person switching terminals.
    newcomer.session(block("ncat"));
    newcomer.wait_logged_out("alice", 1);
    newcomer.session(block("accounts"));
    newcomer.wait_logged_out("dave", 1);
    newcomer.session(block("resume"));
    newcomer.wait_logged_out("dave", 2);

    match tool("python3") {
        None => {}
        Some(python) => {
            let script = block("python").join("\n");
            // The ncat session above ended with QUIT: alice is offline.
            let out = newcomer.python(&python, &script);
            assert_eq!(out, block("python-output"), "the Python example's output");
            // With alice still logged in elsewhere.
            newcomer.wait_logged_out("alice", 2);
            let addr = newcomer.addr(default.port());
            let mut alice = Transcript::connect(addr);
            alice.typed("LOGIN alice");
            assert_eq!(alice.answer(1), ["OK"]);
            let out = newcomer.python(&python, &script);
            assert_eq!(
                out,
                block("python-output-alice-online"),
                "the Python example's output while alice is logged in"
            );
            drop(alice);
        }
    }

    // Ctrl-C, and the server again with a JSON port on the same data.
    newcomer.stop();
    newcomer.run_cargo(&block("serve-json")[0]);
    newcomer.session(block("json"));

    newcomer.stop();
    let tls = block("tls");
    newcomer.run_cargo(&tls[0]);
    assert!(
        newcomer.dir.path().join("dev-tls/key.pem").is_file(),
        "{:?} writes dev-tls/key.pem",
        tls[0]
    );
    newcomer.run_cargo(&tls[1]);
    if tool("openssl").is_some() {
        newcomer.session(block("tls-session"));
    }
    newcomer.stop();
}

/// The fenced blocks of `readme` whose info string holds `example=NAME`, by name.
fn examples(readme: &Path) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(readme).expect("README.md");
    let mut found = BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => {
                if let Some(name) = info
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("example="))
                {
                    current = Some((name.to_string(), Vec::new()));
                } else if !info.trim().is_empty() || line == "```" {
                    // An unmarked block: skip to its end.
                    current = Some((String::new(), Vec::new()));
                }
            }
            (Some(_), Some("")) => {
                let (name, lines) = current.take().unwrap();
                if !name.is_empty() {
                    assert!(
                        found.insert(name.clone(), lines).is_none(),
                        "two README blocks named example={name}"
                    );
                }
            }
            (Some((_, lines)), _) => lines.push(line.to_string()),
            (None, None) => {}
        }
    }
    assert!(current.is_none(), "README.md ends inside a code block");
    found
}

/// The path of `name` on `PATH`, or `None` (with a note) if it is missing and allowed to be.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let required = std::env::var("PARLEY_README_TOOLS").is_ok_and(|v| v == "required");
        assert!(
            !required,
            "{name} is required (PARLEY_README_TOOLS=required) but not on PATH"
        );
        eprintln!("README example skipped: {name} is not on PATH");
    }
    found
}

/// A person following the README: a directory to work in, the server they started, what
/// they copied from the server's answers.
struct Newcomer {
    dir: tempfile::TempDir,
    server: Option<Proc>,
    /// The README's port numbers and the addresses the running server got for them.
    ports: HashMap<u16, SocketAddr>,
    kept: HashMap<String, String>,
}

impl Newcomer {
    fn new() -> Newcomer {
        Newcomer {
            dir: tempfile::tempdir().expect("temp dir"),
            server: None,
            ports: HashMap::new(),
            kept: HashMap::new(),
        }
    }

    /// Runs a README line `cargo run [--release] -- ARGS  # comment` as `parley ARGS`:
    /// `serve` starts the server (in the background), anything else runs to its end.
    fn run_cargo(&mut self, line: &str) {
        let line = line.split(" #").next().unwrap_or_default();
        let (cargo, args) = line
            .split_once(" -- ")
            .unwrap_or_else(|| panic!("not a `cargo run -- ...` line: {line:?}"));
        assert!(cargo.starts_with("cargo run"), "{line:?}");
        let mut args: Vec<String> = args.split_whitespace().map(String::from).collect();
        if args[0] != "serve" {
            let mut cmd = parley_command(&args);
            cmd.current_dir(self.dir.path()).stdout(Stdio::piped());
            let out = run_bounded(cmd, line);
            assert!(out.status.success(), "{line:?}: {out:?}");
            return;
        }

        assert!(self.server.is_none(), "{line:?} while a server still runs");
        // Every listening address goes to port 0; remember which README port it was.
        let mut wanted: Vec<(&str, u16)> = Vec::new();
        let mut i = 1;
        while i < args.len() {
            let protocol = match args[i].as_str() {
                "--listen" => "every protocol",
                "--listen-json" => "json",
                "--listen-text" => "text",
                "--listen-binary" => "binary",
                "--listen-tls" => "tls",
                _ => {
                    i += 1;
                    continue;
                }
            };
            let addr: SocketAddr = args[i + 1].parse().expect("an address");
            wanted.push((protocol, addr.port()));
            args[i + 1] = SocketAddr::new(addr.ip(), 0).to_string();
            i += 2;
        }
        if !wanted.iter().any(|(p, _)| *p == "every protocol") {
            let default = parley_server::Config::default().listen;
            wanted.push(("every protocol", default.port()));
            args.extend([
                "--listen".into(),
                SocketAddr::new(default.ip(), 0).to_string(),
            ]);
        }
        let mut cmd = parley_command(&args);
        cmd.current_dir(self.dir.path());
        let mut proc = Proc::spawn(cmd);
        let listening = proc.wait_for_start();
        self.ports.clear();
        for (protocol, port) in wanted {
            let got = listening
                .iter()
                .find(|l| l.protocol == protocol)
                .unwrap_or_else(|| panic!("no {protocol} port in {listening:?}"));
            self.ports.insert(port, got.addr);
        }
        self.server = Some(proc);
    }

    /// Ctrl-C: SIGINT, and a clean exit.
    fn stop(&mut self) {
        let mut proc = self.server.take().expect("a running server");
        proc.signal(libc::SIGINT);
        let status = proc.wait_exit(STOP_TIMEOUT);
        assert!(
            status.success(),
            "exit after Ctrl-C: {status}\n{}",
            proc.logs()
        );
    }

    /// Waits (bounded) until the server has logged `count` disconnections of `user`.
    fn wait_logged_out(&self, user: &str, count: usize) {
        let server = self.server.as_ref().expect("a running server");
        let needle = format!("user={user} ");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = server.logs();
            let seen = logs
                .lines()
                .filter(|l| l.contains("disconnected") && l.contains(&needle))
                .count();
            if seen >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{user} not disconnected {count} times:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running server's address for the README's `port`.
    fn addr(&self, port: u16) -> SocketAddr {
        *self
            .ports
            .get(&port)
            .unwrap_or_else(|| panic!("the server has no port for the README's {port}"))
    }

    /// `text` with every README port number replaced by the running server's.
    fn with_ports(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (port, addr) in &self.ports {
            out = replace_number(&out, &port.to_string(), &addr.port().to_string());
        }
        out
    }

    /// Runs a transcript block: its first line says how to connect.
    fn session(&mut self, block: &[String]) {
        let (command, lines) = block.split_first().expect("an empty session block");
        let words: Vec<&str> = command
            .strip_prefix("$ ")
            .unwrap_or_else(|| panic!("a session starts with `$ `: {command:?}"))
            .split_whitespace()
            .collect();
        let mut transcript = match words.as_slice() {
            ["ncat", host, port] => {
                let addr = self.addr(port.parse().expect("a port"));
                assert_eq!(addr.ip().to_string(), *host);
                Transcript::connect(addr)
            }
            ["openssl", args @ ..] => {
                let args: Vec<String> = args.iter().map(|a| self.with_ports(a)).collect();
                Transcript::spawn(Command::new("openssl").args(args), self.dir.path())
            }
            _ => panic!("no way to run {command:?}"),
        };
        transcript.play(lines, &mut self.kept);
    }

    /// Runs `script` with python3; returns its output lines.
    fn python(&self, python: &Path, script: &str) -> Vec<String> {
        let mut cmd = Command::new(python);
        cmd.arg("-c")
            .arg(self.with_ports(script))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = run_bounded(cmd, "the Python example");
        assert!(out.status.success(), "python3: {out:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .lines()
            .map(String::from)
            .collect()
    }
}

/// Replaces `number` in `text` where it is not part of a longer number.
fn replace_number(text: &str, number: &str, by: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(number) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + number.len()..].chars().next();
        let alone = !before.is_some_and(|c| c.is_ascii_digit())
            && !after.is_some_and(|c| c.is_ascii_digit());
        out.push_str(&rest[..i]);
        out.push_str(if alone { by } else { number });
        rest = &rest[i + number.len()..];
    }
    out.push_str(rest);
    out
}

/// Runs `cmd` to its end, killing it past [`RUN_TIMEOUT`].
fn run_bounded(mut cmd: Command, what: &str) -> std::process::Output {
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("{what} still running after {RUN_TIMEOUT:?}: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One interactive connection: what the person types goes to `input`, what the server
/// writes arrives line by line (`None`: the connection ended).
struct Transcript {
    input: Box<dyn Write>,
    lines: mpsc::Receiver<Option<String>>,
    /// JSON lines (the test's PING is then a JSON request).
    json: bool,
    /// A program run for the session (openssl, which keeps running after its input ends),
    /// killed by its PID when the session ends.
    child: Option<Child>,
    /// The connection, shut down when the session ends (the reading thread holds a clone).
    stream: Option<TcpStream>,
}

impl Transcript {
    fn connect(addr: SocketAddr) -> Transcript {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let reader = stream.try_clone().expect("clone the stream");
        let mut transcript =
            Transcript::new(Box::new(stream.try_clone().expect("clone")), reader, None);
        transcript.stream = Some(stream);
        transcript
    }

    fn spawn(cmd: &mut Command, dir: &Path) -> Transcript {
        let mut child = cmd
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let input = child.stdin.take().expect("stdin");
        let output = child.stdout.take().expect("stdout");
        Transcript::new(Box::new(input), output, Some(child))
    }

    fn new(
        input: Box<dyn Write>,
        output: impl Read + Send + 'static,
        child: Option<Child>,
    ) -> Transcript {
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { break };
                if tx.send(Some(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(None);
        });
        Transcript {
            input,
            lines,
            json: false,
            child,
            stream: None,
        }
    }

    /// Types `line` (and Enter).
    fn typed(&mut self, line: &str) {
        writeln!(self.input, "{line}").expect("write a line");
        self.input.flush().expect("flush");
    }

    /// Everything the server wrote since the last answer, up to the answer to a PING of the
    /// test's own (left out), or to the end of the connection. `pongs` is how many `PONG`s
    /// end it: two if the line typed last was a PING too.
    fn answer(&mut self, pongs: usize) -> Vec<String> {
        let json = self.json;
        let ping = if json {
            r#"{"command":"PING","data":"","id":"readme-sync"}"#
        } else {
            "PING"
        };
        let is_pong = |l: &str| {
            if json {
                l.ends_with(r#","id":"readme-sync"}"#)
            } else {
                l == "PONG"
            }
        };
        let mut left = if json { 1 } else { pongs };
        // Writing into a connection the server has closed (after QUIT) may fail: the
        // answer then ends at the end of the connection.
        let _ = writeln!(self.input, "{ping}").and_then(|()| self.input.flush());
        let mut got = Vec::new();
        loop {
            match self.lines.recv_timeout(LINE_TIMEOUT) {
                Ok(Some(line)) if is_pong(&line) && left == 1 => return got,
                Ok(Some(line)) => {
                    left -= usize::from(is_pong(&line));
                    got.push(line);
                }
                Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => return got,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no answer within {LINE_TIMEOUT:?}; so far {got:?}")
                }
            }
        }
    }

    /// Plays a transcript: types its typed lines, and checks that the server writes its
    /// other lines, in order, each right after the line typed before it.
    fn play(&mut self, transcript: &[String], kept: &mut HashMap<String, String>) {
        self.json = transcript.iter().any(|l| l.starts_with('{'));
        let mut at = 0;
        let mut typed = String::from("(connecting)");
        loop {
            // The server's lines up to the next typed one (a JSON port's welcome first).
            let pongs = 1 + usize::from(typed.eq_ignore_ascii_case("PING"));
            let answer = self.answer(pongs);
            for line in &answer {
                let expected = transcript.get(at).unwrap_or_else(|| {
                    panic!("after {typed:?} the server wrote {line:?}; the README shows no more")
                });
                assert!(
                    matches(expected, line, kept),
                    "after {typed:?} the server wrote {line:?}, the README shows {expected:?} \
                     (the whole answer: {answer:?})"
                );
                at += 1;
            }
            if at == transcript.len() {
                break;
            }
            typed = fill(&transcript[at], kept);
            self.typed(&typed);
            at += 1;
        }
    }
}

impl Drop for Transcript {
    fn drop(&mut self) {
        if let Some(stream) = &self.stream {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Splits a README line at its `<name>` holes: (literal, hole name) pairs, the last hole
/// empty.
fn holes(pattern: &str) -> Vec<(&str, &str)> {
    let mut parts = Vec::new();
    let mut rest = pattern;
    loop {
        let hole = rest.char_indices().find_map(|(i, c)| {
            let name = rest[i + c.len_utf8()..].split('>').next()?;
            let valid = c == '<'
                && !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                && rest[i + 1 + name.len()..].starts_with('>');
            valid.then_some((i, name))
        });
        match hole {
            Some((i, name)) => {
                parts.push((&rest[..i], name));
                rest = &rest[i + name.len() + 2..];
            }
            None => {
                parts.push((rest, ""));
                return parts;
            }
        }
    }
}

/// Whether `line` is what the README line `pattern` shows; keeps what its holes matched.
fn matches(pattern: &str, line: &str, kept: &mut HashMap<String, String>) -> bool {
    fn go<'a>(parts: &[(&str, &str)], line: &'a str, found: &mut Vec<(String, &'a str)>) -> bool {
        let Some(((literal, hole), rest)) = parts.split_first() else {
            return line.is_empty();
        };
        let Some(line) = line.strip_prefix(literal) else {
            return false;
        };
        if hole.is_empty() {
            // The last part: the line must end with its literal.
            return line.is_empty();
        }
        // A hole is at least one character of one word, as short as the rest allows.
        let ends = line.char_indices().map(|(i, _)| i).skip(1);
        for end in ends.chain([line.len()]) {
            if end == 0 || line[..end].contains(char::is_whitespace) {
                break;
            }
            found.push((hole.to_string(), &line[..end]));
            if go(rest, &line[end..], found) {
                return true;
            }
            found.pop();
        }
        false
    }
    let parts = holes(pattern);
    let mut found = Vec::new();
    if !go(&parts, line, &mut found) {
        return false;
    }
    for (name, value) in found {
        kept.insert(name, value.to_string());
    }
    true
}

/// A typed README line with its `<name>` holes filled from what was kept.
fn fill(line: &str, kept: &HashMap<String, String>) -> String {
    let mut out = String::new();
    for (literal, hole) in holes(line) {
        out.push_str(literal);
        if !hole.is_empty() {
            let value = kept
                .get(hole)
                .unwrap_or_else(|| panic!("{line:?}: no <{hole}> shown by the server before"));
            out.push_str(value);
        }
    }
    out
}

#[test]
fn holes_match_one_word_and_fill_typed_lines() {
    let mut kept = HashMap::new();
    assert!(matches(
        "TOKEN <token> <expiry>",
        "TOKEN abc 2026-01-01T00:00:00Z",
        &mut kept
    ));
    assert_eq!(kept["token"], "abc");
    assert_eq!(fill("RESUME <token>", &kept), "RESUME abc");
    assert!(matches(
        r#""data":"[<time>] carol: hi""#,
        r#""data":"[12:00:01] carol: hi""#,
        &mut kept
    ));
    assert_eq!(kept["time"], "12:00:01");
    assert!(!matches("OK <name>", "OK two words", &mut kept));
    assert!(!matches("OK <name>", "OK ", &mut kept));
    assert!(!matches("OK", "OK dave", &mut kept));
    assert!(matches("ROOM #general 1 1", "ROOM #general 1 1", &mut kept));
    assert_eq!(
        replace_number("(\"h\", 5555) 55555", "5555", "41000"),
        "(\"h\", 41000) 55555"
    );
}
