//! HTTP on the shared port over real sockets (docs/PROTOCOL.md "HTTP"): sniffed beside
//! every other protocol, the embedded app with its security headers, `/healthz`, and files
//! over HTTP with the same rule as the socket protocols' transfers.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::TestServer;
use parley_client::LineClient;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// An HTTP response as a test reads it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.text()))
    }
}

/// Parses a whole response read until the server closed (`Connection: close`).
fn parse(raw: &[u8]) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Answer {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// Sends one request (head lines without the request's end, then `body`) and reads the
/// answer.
async fn request(addr: SocketAddr, head: &str, body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("{head}\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .unwrap();
    parse(&raw)
}

async fn get(addr: SocketAddr, path: &str, extra: &str) -> Answer {
    let head = match extra {
        "" => format!("GET {path} HTTP/1.1"),
        extra => format!("GET {path} HTTP/1.1\r\n{extra}"),
    };
    request(addr, &head, b"").await
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A JSON-lines connection on the shared port logged in as a new account `name`, and its
/// device token.
async fn account(server: &TestServer, name: &str) -> (LineClient, String) {
    let mut c = LineClient::connect(server.addr).await.unwrap();
    let register =
        format!(r#"{{"command":"REGISTER","data":"{name}","password":"correct horse"}}"#);
    assert!(c.ask(&register).await.unwrap().contains("\"success\":true"));
    let login = format!(
        r#"{{"command":"LOGIN","data":"{name}","password":"correct horse","device":"web","want_token":true}}"#
    );
    let answer: serde_json::Value = serde_json::from_str(&c.ask(&login).await.unwrap()).unwrap();
    let token = answer["data"]["token"]
        .as_str()
        .expect("a token")
        .to_string();
    (c, token)
}

#[tokio::test]
async fn http_is_sniffed_beside_every_protocol_on_one_port() {
    let server = TestServer::start().await;
    let mut text = server.text_login("ann").await;
    let mut json = LineClient::connect(server.addr).await.unwrap();
    let mut binary = server.login("bea").await;

    let health = get(server.addr, "/healthz", "").await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    for method in ["HEAD", "OPTIONS", "POST", "PUT"] {
        let answer = request(server.addr, &format!("{method} / HTTP/1.1"), b"").await;
        assert!(answer.status < 500, "{method}: {answer:?}");
        assert!(
            answer.header("x-content-type-options").is_some(),
            "{method}"
        );
    }

    // The others go on as before, beside HTTP.
    assert_eq!(text.ask("PING").await.unwrap(), "PONG");
    let pong = json.ask(r#"{"command":"PING","id":1}"#).await.unwrap();
    assert!(pong.contains("PONG"), "{pong}");
    assert_eq!(
        binary.login(2, "bea").await.unwrap(),
        0x04,
        "already logged in"
    );

    // A text line that starts like a method is decided by its next byte, or its newline,
    // however the bytes arrive.
    for (first, rest, answer) in [
        ("P", "ING\n", "PONG"),
        ("PU", "T\n", "ERR unknown-cmd"),
        ("GE", "T\n", "ERR unknown-cmd"),
    ] {
        let mut c = server.text().await;
        c.send_raw(first.as_bytes()).await.unwrap();
        c.send_raw(rest.as_bytes()).await.unwrap();
        assert_eq!(c.line().await.unwrap(), answer, "{first}{rest}");
    }
    // And a request line split anywhere is still HTTP.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"G").await.unwrap();
    stream.flush().await.unwrap();
    stream
        .write_all(b"ET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse(&raw).status, 200);
    server.stop().await;
}

#[tokio::test]
async fn the_app_is_served_with_the_security_headers_on_every_response() {
    let server = TestServer::start().await;
    let page = get(server.addr, "/", "").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page
        .text()
        .contains(r#"<script type="module" src="/js/main.js">"#));
    assert!(!page.text().contains("<script>"), "no inline script");
    let script = get(server.addr, "/js/main.js", "").await;
    assert_eq!(script.status, 200);
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let missing = get(server.addr, "/nothing-here", "").await;
    assert_eq!(missing.status, 404);
    let refused = request(server.addr, "POST / HTTP/1.1\r\nContent-Length: 0", b"").await;
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("GET, HEAD, OPTIONS"));

    for answer in [&page, &script, &missing, &refused] {
        let csp = answer.header("content-security-policy").expect("a CSP");
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "connect-src 'self'",
        ] {
            assert!(csp.contains(part), "{part} in {csp}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("http"),
            "{csp}"
        );
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(answer.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(answer.header("x-frame-options"), Some("DENY"));
    }

    // Revalidated by its entity tag.
    let tag = script.header("etag").expect("an ETag").to_string();
    let again = get(server.addr, "/js/main.js", &format!("If-None-Match: {tag}")).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn healthz_says_503_once_the_server_is_shutting_down() {
    let server = TestServer::start().await;
    let addr = server.addr;
    // A request whose head is not complete when the shutdown begins is still answered.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert_eq!(get(addr, "/healthz", "").await.status, 200);
    let stopping = tokio::spawn(server.stop());
    // The shutdown has begun once the port stops accepting.
    let mut refused = false;
    for _ in 0..500 {
        match TcpStream::connect(addr).await {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(_) => tokio::task::yield_now().await,
        }
    }
    assert!(refused, "the port closed");
    stream
        .write_all(b"Connection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let answer = parse(&raw);
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (503, "shutting down\n")
    );
    stopping.await.unwrap();
}

#[tokio::test]
async fn files_go_over_http_in_pieces_and_only_to_members() {
    let server = TestServer::start().await;
    let (mut alice, alice_token) = account(&server, "alice").await;
    let (_bob, bob_token) = account(&server, "bob").await;
    let (_carol, carol_token) = account(&server, "carol").await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let hash = sha256_hex(&data);
    let path = format!("/files/{hash}");
    let auth = |token: &str| format!("Authorization: Bearer {token}");
    let put = |range: String, token: &str| {
        format!(
            "PUT {path} HTTP/1.1\r\n{}\r\nContent-Range: {range}",
            auth(token)
        )
    };

    // No token, a bad token: refused.
    let anonymous = request(
        server.addr,
        &format!("PUT {path} HTTP/1.1\r\nContent-Range: bytes */300000"),
        b"",
    )
    .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    let forged = request(
        server.addr,
        &put("bytes */300000".into(), &"0".repeat(64)),
        b"",
    )
    .await;
    assert_eq!(forged.status, 401);

    // The first piece, then a piece at the wrong offset, then where the server is.
    let first = &data[..100_000];
    let head = format!(
        "{}\r\nContent-Length: 100000",
        put("bytes 0-99999/300000".into(), &alice_token)
    );
    let answer = request(server.addr, &head, first).await;
    assert_eq!(
        (answer.status, answer.json()["received"].as_u64()),
        (200, Some(100_000))
    );
    let head = format!(
        "{}\r\nContent-Length: 10",
        put("bytes 5-14/300000".into(), &alice_token)
    );
    let answer = request(server.addr, &head, &data[5..15]).await;
    assert_eq!(
        (answer.status, answer.json()["received"].as_u64()),
        (409, Some(100_000))
    );
    let answer = request(
        server.addr,
        &put("bytes */300000".into(), &alice_token),
        b"",
    )
    .await;
    assert_eq!(
        answer.json(),
        serde_json::json!({"complete": false, "received": 100_000})
    );
    let head = format!(
        "{}\r\nContent-Length: 200000",
        put("bytes 100000-299999/300000".into(), &alice_token)
    );
    let answer = request(server.addr, &head, &data[100_000..]).await;
    assert_eq!(
        (answer.status, answer.json()),
        (200, serde_json::json!({"complete": true}))
    );

    // Bytes that are not the announced hash are refused, and the upload starts over.
    let other = sha256_hex(b"something else");
    let head = format!(
        "PUT /files/{other} HTTP/1.1\r\n{}\r\nContent-Length: 5",
        auth(&alice_token)
    );
    assert_eq!(request(server.addr, &head, b"wrong").await.status, 422);

    // Sent to bob: bob may download it, whole or in part; carol may not.
    let send = format!(
        r#"{{"command":"SEND_FILE","to":"bob","sha256":"{hash}","name":"report <1>.bin","type":"text/html","data":"here","id":5}}"#
    );
    let sent = alice.ask(&send).await.unwrap();
    assert!(sent.contains("File sent"), "{sent}");
    let whole = get(
        server.addr,
        &format!("{path}?name=report%20%3C1%3E.bin&type=text/html"),
        &auth(&bob_token),
    )
    .await;
    assert_eq!(whole.status, 200);
    assert_eq!(sha256_hex(&whole.body), hash, "byte-identical");
    assert_eq!(whole.header("content-length"), Some("300000"));
    assert_eq!(
        whole.header("content-type"),
        Some("application/octet-stream"),
        "never served as HTML"
    );
    assert_eq!(whole.header("x-content-type-options"), Some("nosniff"));
    assert!(whole
        .header("content-security-policy")
        .unwrap()
        .contains("sandbox"));
    assert_eq!(
        whole.header("content-disposition"),
        Some("attachment; filename=\"report <1>.bin\"; filename*=UTF-8''report%20%3C1%3E.bin")
    );
    let part = get(
        server.addr,
        &path,
        &format!("{}\r\nRange: bytes=1000-1999", auth(&bob_token)),
    )
    .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 1000-1999/300000"));
    assert_eq!(part.body, &data[1000..2000]);
    let tail = get(
        server.addr,
        &path,
        &format!("{}\r\nRange: bytes=-10", auth(&bob_token)),
    )
    .await;
    assert_eq!((tail.status, tail.body.as_slice()), (206, &data[299_990..]));
    let past = get(
        server.addr,
        &path,
        &format!("{}\r\nRange: bytes=300000-", auth(&bob_token)),
    )
    .await;
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some("bytes */300000"));
    let carols = get(server.addr, &path, &auth(&carol_token)).await;
    assert_eq!(carols.status, 403);
    assert!(carols.body.len() < 100, "nothing of the file");
    assert_eq!(get(server.addr, &path, "").await.status, 401);
    server.stop().await;
}

/// An upload whose body stops arriving ends with `408` after `request_timeout_ms` of
/// silence, keeping what arrived: the client resumes from there. A connection is not held
/// by a client that went quiet.
#[tokio::test]
async fn an_upload_that_goes_quiet_ends_and_keeps_what_arrived() {
    let server = TestServer::start_with(|c| c.request_timeout_ms = 500).await;
    let (_alice, token) = account(&server, "alice").await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let path = format!("/files/{}", sha256_hex(&data));
    let put = |range: &str| {
        format!("PUT {path} HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Range: {range}")
    };

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "{}\r\nContent-Length: 100000\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        put("bytes 0-99999/100000")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&data[..40_000]).await.unwrap();
    // Nothing more is sent, and the socket stays open: the server ends the request.
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("answered and closed in time")
        .unwrap();
    let answer = parse(&raw);
    assert_eq!(
        (answer.status, answer.json()),
        (
            408,
            serde_json::json!({"complete": false, "received": 40_000})
        )
    );

    let asked = request(server.addr, &put("bytes */100000"), b"").await;
    assert_eq!(
        asked.json(),
        serde_json::json!({"complete": false, "received": 40_000})
    );
    let head = format!(
        "{}\r\nContent-Length: 60000",
        put("bytes 40000-99999/100000")
    );
    let rest = request(server.addr, &head, &data[40_000..]).await;
    assert_eq!(
        (rest.status, rest.json()),
        (200, serde_json::json!({"complete": true}))
    );
    server.stop().await;
}
