//! `parley admin` over the real admin socket of a real server (and, with the server stopped,
//! on its data directory): each command does what it says to clients connected over TCP.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::{test_config, TestServer, PASSWORD};
use parley_client::LineClient;
use parley_server::admin::{self, Request};
use serde_json::Value;

/// Sends `request` over the server's admin socket; panics on a failure.
async fn ok(server: &TestServer, request: Request) -> Value {
    match try_ask(server, request.clone()).await {
        Ok(data) => data,
        Err(e) => panic!("{request:?} failed: {e}"),
    }
}

/// Sends `request`; the failure's text on a failure.
async fn try_ask(server: &TestServer, request: Request) -> Result<Value, String> {
    let socket = socket(server).await;
    let answer = admin::ask(&socket, &request).await.expect("admin socket");
    answer.map_err(|e| e.0)
}

/// The server's admin socket, once it is there (the server binds it once its store is
/// open, after `start` returned).
async fn socket(server: &TestServer) -> PathBuf {
    let socket = admin::socket_path(server.dir.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no admin socket");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    socket
}

/// A text connection logged in to account `name` on `device`.
async fn account_login(server: &TestServer, name: &str, device: &str) -> LineClient {
    let mut c = server.text().await;
    let answer = c
        .ask(&format!("LOGIN {name} {PASSWORD} {device}"))
        .await
        .unwrap();
    assert_eq!(answer, "OK", "LOGIN {name} on {device}");
    c
}

/// Reads until the server closes; returns the lines it wrote last.
async fn until_closed(c: &mut LineClient) -> Vec<String> {
    let mut lines = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(10), c.line_or_eof())
        .await
        .expect("closed in time")
        .unwrap()
    {
        lines.push(line);
    }
    lines
}

fn names(list: &Value, key: &str) -> Vec<String> {
    let rows = list.as_array().expect("a list");
    rows.iter()
        .map(|r| r[key].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_socket_is_the_owners_only() {
    let server = TestServer::start().await;
    let socket = socket(&server).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // A malformed request is answered with an error, and the connection goes on.
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let requests = "{\"command\":\"users.nonsense\"}\n{\"command\":\"users.list\"}\n";
    write.write_all(requests.as_bytes()).await.unwrap();
    let bad = lines.next_line().await.unwrap().unwrap();
    assert!(
        bad.contains(r#""ok":false"#) && bad.contains("bad request"),
        "{bad}"
    );
    let good = lines.next_line().await.unwrap().unwrap();
    assert_eq!(good, r#"{"data":[],"ok":true}"#);
    server.stop().await;
}

/// Sessions are listed with their user, device, protocol, peer and login time; a kick ends
/// them, telling a text client why; the user may come back.
#[tokio::test]
async fn sessions_are_listed_and_kicked() {
    let server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    let _carol = server.login("carol").await;
    let list = ok(&server, Request::SessionsList).await;
    assert_eq!(names(&list, "user"), ["bob", "carol"]);
    assert_eq!(names(&list, "protocol"), ["text", "binary"]);
    assert_eq!(names(&list, "peer"), ["127.0.0.1", "127.0.0.1"]);
    assert!(list[0]["since"].as_i64().unwrap() > 0);

    let kicked = ok(
        &server,
        Request::SessionsKick {
            user: Some("bob".into()),
            device: None,
            session: None,
        },
    )
    .await;
    assert_eq!(kicked["ended"], 1);
    assert_eq!(
        until_closed(&mut bob).await,
        ["INFO disconnected: disconnected by an operator"]
    );
    let carol_id = list[1]["session"].as_u64().unwrap();
    let by_id = Request::SessionsKick {
        user: None,
        device: None,
        session: Some(carol_id),
    };
    assert_eq!(ok(&server, by_id).await["ended"], 1);
    let back = server.text_login("bob").await;
    drop(back);
    server.stop().await;
}

/// A disabled account's sessions end at once and its logins are refused, across a restart,
/// until it is enabled again.
#[tokio::test]
async fn a_disabled_user_is_out_until_enabled() {
    let mut server = TestServer::start().await;
    server.register("alice").await;
    let mut laptop = account_login(&server, "alice", "laptop").await;
    let mut phone = account_login(&server, "alice", "phone").await;
    let disable = Request::UsersDisable {
        name: "alice".into(),
    };
    ok(&server, disable).await;
    for c in [&mut laptop, &mut phone] {
        assert_eq!(
            until_closed(c).await,
            ["INFO signed out: the account was disabled"]
        );
    }
    let mut c = server.text().await;
    let login = format!("LOGIN alice {PASSWORD}");
    assert_eq!(c.ask(&login).await.unwrap(), "ERR invalid-credentials");
    assert_eq!(c.ask("LOGIN alice").await.unwrap(), "ERR username-taken");
    let users = ok(&server, Request::UsersList).await;
    assert_eq!(users[0]["disabled"], true);

    server.restart().await;
    let mut c = server.text().await;
    assert_eq!(c.ask(&login).await.unwrap(), "ERR invalid-credentials");
    let enable = Request::UsersEnable {
        name: "alice".into(),
    };
    ok(&server, enable).await;
    assert_eq!(c.ask(&login).await.unwrap(), "OK");
    server.stop().await;
}

/// A deleted account is gone for logins, messages, rooms and contacts; its messages stay
/// in the others' history, and its name is not given to anyone else.
#[tokio::test]
async fn a_deleted_user_keeps_its_messages_and_its_name() {
    let mut server = TestServer::start().await;
    server.register("alice").await;
    let mut alice = account_login(&server, "alice", "laptop").await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(alice.ask("JOIN lobby").await.unwrap(), "OK");
    assert_eq!(bob.ask("JOIN lobby").await.unwrap(), "OK");
    assert_eq!(alice.line().await.unwrap(), "INFO bob joined lobby");
    alice.send("DM bob hello from alice").await.unwrap();
    assert_eq!(bob.line().await.unwrap(), "DM alice hello from alice");

    let deleted = ok(
        &server,
        Request::UsersDelete {
            name: "alice".into(),
        },
    )
    .await;
    assert_eq!(deleted["messages"], "kept");
    assert_eq!(
        until_closed(&mut alice).await,
        ["INFO signed out: the account was disabled"]
    );
    assert_eq!(bob.line().await.unwrap(), "INFO alice disconnected");
    assert_eq!(
        bob.ask("DM alice are you there").await.unwrap(),
        "ERR user-not-found"
    );
    assert_eq!(bob.ask("MEMBERS lobby").await.unwrap(), "MEMBER bob online");
    assert_eq!(bob.line().await.unwrap(), "OK");
    let history = bob.ask("HISTORY alice").await.unwrap();
    assert!(history.ends_with("alice hello from alice"), "{history}");
    assert_eq!(bob.line().await.unwrap(), "OK");
    let mut c = server.text().await;
    let register = format!("REGISTER alice {PASSWORD}");
    assert_eq!(c.ask(&register).await.unwrap(), "ERR username-taken");
    assert_eq!(c.ask("LOGIN alice").await.unwrap(), "ERR username-taken");

    server.restart().await;
    let mut c = server.text().await;
    assert_eq!(c.ask(&register).await.unwrap(), "ERR username-taken");
    assert_eq!(
        c.ask(&format!("LOGIN alice {PASSWORD}")).await.unwrap(),
        "ERR invalid-credentials"
    );
    let users = ok(&server, Request::UsersList).await;
    let alice = &users.as_array().unwrap()[0];
    assert_eq!(
        (alice["name"].as_str(), alice["deleted"].as_bool()),
        (Some("alice"), Some(true))
    );
    assert_eq!(alice["account"], false, "the password is gone");
    server.stop().await;
}

/// Devices and their tokens are listed; revoking one device's ends its session and its
/// token, and leaves the other device alone.
#[tokio::test]
async fn a_revoked_device_is_signed_out() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = account_login(&server, "alice", "phone").await;
    let token = phone.ask("TOKEN").await.unwrap();
    let token = token.split(' ').nth(1).unwrap().to_string();
    let mut laptop = account_login(&server, "alice", "laptop").await;

    let devices = ok(
        &server,
        Request::DevicesList {
            name: "alice".into(),
        },
    )
    .await;
    assert_eq!(names(&devices, "name"), ["laptop", "phone"]);
    let phone_tokens = &devices[1]["tokens"];
    assert_eq!(phone_tokens.as_array().unwrap().len(), 1);
    assert_eq!(phone_tokens[0]["valid"], true);

    let revoke = Request::DevicesRevoke {
        name: "alice".into(),
        device: Some("phone".into()),
    };
    assert_eq!(ok(&server, revoke).await["sessions_ended"], 1);
    assert_eq!(
        until_closed(&mut phone).await,
        ["INFO disconnected: disconnected by an operator"]
    );
    let mut c = server.text().await;
    let resume = format!("RESUME {token}");
    assert_eq!(c.ask(&resume).await.unwrap(), "ERR invalid-credentials");
    assert_eq!(laptop.ask("PING").await.unwrap(), "PONG");
    let devices = ok(
        &server,
        Request::DevicesList {
            name: "alice".into(),
        },
    )
    .await;
    assert_eq!(devices[1]["tokens"][0]["valid"], false);
    server.stop().await;
}

/// An operator creates an account and resets its password: the old password and every
/// session end.
#[tokio::test]
async fn accounts_are_created_and_reset() {
    let server = TestServer::start().await;
    let create = Request::UsersCreate {
        name: "dave".into(),
        password: PASSWORD.into(),
    };
    ok(&server, create.clone()).await;
    assert_eq!(try_ask(&server, create).await.unwrap_err(), "dave is taken");
    let short = Request::UsersCreate {
        name: "eve".into(),
        password: "short".into(),
    };
    assert!(try_ask(&server, short)
        .await
        .unwrap_err()
        .contains("8 to 128"));
    let mut dave = account_login(&server, "dave", "laptop").await;
    let reset = Request::UsersResetPassword {
        name: "dave".into(),
        password: "a-new-password".into(),
    };
    ok(&server, reset).await;
    assert_eq!(
        until_closed(&mut dave).await,
        ["INFO signed out: the password was changed"]
    );
    let mut c = server.text().await;
    let old = format!("LOGIN dave {PASSWORD}");
    assert_eq!(c.ask(&old).await.unwrap(), "ERR invalid-credentials");
    assert_eq!(c.ask("LOGIN dave a-new-password").await.unwrap(), "OK");
    let shown = ok(
        &server,
        Request::UsersShow {
            name: "dave".into(),
        },
    )
    .await;
    assert_eq!(shown["user"]["account"], true);
    assert_eq!(names(&shown["sessions"], "device"), ["default"]);
    server.stop().await;
}

/// Rooms are listed with their counts and members; a deleted room is gone for its members,
/// who are told, and its name starts a new room without the old one's history. Anonymous
/// sessions in it stay connected and counted.
#[tokio::test]
async fn a_deleted_room_starts_again_empty() {
    let mut server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    let _carol = server.text_login("carol").await;
    assert_eq!(bob.ask("JOIN #lobby").await.unwrap(), "OK");
    let mut guest = server.text().await;
    assert_eq!(
        guest.ask("/join #lobby").await.unwrap(),
        "> welcome to #lobby"
    );
    assert_eq!(bob.line().await.unwrap(), "INFO anonymous joined #lobby");
    bob.send("SAY #lobby old news").await.unwrap();
    assert_eq!(guest.line().await.unwrap(), "> bob: old news");
    let rooms = ok(&server, Request::RoomsList).await;
    assert_eq!(
        rooms,
        serde_json::json!([{"name": "#lobby", "members": 2, "online": 2}])
    );
    let members = ok(
        &server,
        Request::RoomsMembers {
            room: "#lobby".into(),
        },
    )
    .await;
    assert_eq!(
        members,
        serde_json::json!([
            {"name": "anonymous", "online": true},
            {"name": "bob", "online": true}
        ])
    );

    ok(
        &server,
        Request::RoomsDelete {
            room: "#lobby".into(),
        },
    )
    .await;
    assert_eq!(bob.line().await.unwrap(), "INFO server deleted #lobby");
    assert_eq!(guest.line().await.unwrap(), "> server deleted the room");
    assert_eq!(ok(&server, Request::RoomsList).await, serde_json::json!([]));
    assert_eq!(
        bob.ask("SAY #lobby anyone").await.unwrap(),
        "ERR room-not-found"
    );
    let stats = ok(&server, Request::ServerStats).await;
    assert_eq!(stats["hub"]["anonymous_sessions"], 1, "{stats}");
    let missing = Request::RoomsDelete {
        room: "#lobby".into(),
    };
    assert_eq!(try_ask(&server, missing).await.unwrap_err(), "no such room");

    server.restart().await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("ROOMS").await.unwrap(), "OK");
    assert_eq!(bob.ask("JOIN #lobby").await.unwrap(), "OK");
    assert_eq!(
        bob.ask("HISTORY #lobby").await.unwrap(),
        "OK",
        "no old messages"
    );
    server.stop().await;
}

/// Stats count what the hub holds and what the server serves.
#[tokio::test]
async fn stats_count_users_sessions_and_rooms() {
    let server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN lobby").await.unwrap(), "OK");
    let stats = ok(&server, Request::ServerStats).await;
    assert_eq!(stats["phase"], "ready");
    assert_eq!(stats["hub"]["users"], 1);
    assert_eq!(stats["hub"]["sessions"], 1);
    assert_eq!(stats["hub"]["rooms"], 1);
    assert_eq!(stats["connections"], 1);
    assert!(stats["store"]["database_bytes"].as_u64().unwrap() > 0);
    server.stop().await;
}

/// A reload applies the live settings of the configuration read again, and names those
/// that need a restart.
#[tokio::test]
async fn a_reload_applies_what_can_change_live() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let mut reread = config.clone();
    reread.require_accounts = true;
    reread.max_history = 7;
    let options = parley_server::Options {
        reload_config: Some(Box::new(move || Ok(reread.clone()))),
        reload_on_hangup: false,
    };
    let running = parley_server::start_with(config, options).await.unwrap();
    let server = TestServer::adopt(running, dir);
    assert_eq!(server.text().await.ask("LOGIN bob").await.unwrap(), "OK");
    let reloaded = ok(&server, Request::ServerReload).await;
    assert_eq!(
        reloaded["restart_needed"],
        serde_json::json!(["max_history"])
    );
    let mut c = server.text().await;
    assert_eq!(
        c.ask("LOGIN carol").await.unwrap(),
        "ERR invalid-credentials"
    );
    server.stop().await;
}

/// A drain stops accepting, reports not ready, asks every session to reconnect elsewhere,
/// and stops the server once they are gone.
#[tokio::test]
async fn a_drain_empties_the_server_and_stops_it() {
    let server = TestServer::start_with(|c| {
        c.listen_admin = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut bob = server.text_login("bob").await;
    let mut json = LineClient::connect(server.addr).await.unwrap();
    let login = json
        .ask(r#"{"command":"LOGIN","data":"carol"}"#)
        .await
        .unwrap();
    assert!(login.contains(r#""success":true"#), "{login}");
    let subscribe = json.ask(r#"{"command":"SUBSCRIBE"}"#).await.unwrap();
    assert!(subscribe.contains(r#""success":true"#), "{subscribe}");

    // Two sessions, ended in slices a second apart (a tenth of half the timeout).
    let drain = ok(&server, Request::ServerDrain { timeout_secs: 20 }).await;
    assert_eq!(drain["draining"], 2);
    let running = server.running.as_ref().unwrap();
    let admin_port = running.admin_addr.unwrap();
    assert_eq!(http_status(admin_port, "/readyz").await, Some(503));
    // New connections are refused (the listener is closed) while the sessions end.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(server.addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        until_closed(&mut bob).await,
        ["INFO reconnect: server going away: reconnect elsewhere"]
    );
    let last = until_closed(&mut json).await;
    let event = common::parse(last.last().unwrap());
    assert_eq!(event["event"], "reconnect", "{last:?}");
    let TestServer { running, .. } = server;
    running
        .unwrap()
        .stopped(Duration::from_secs(10))
        .await
        .expect("stopped by itself");
}

/// The status of `GET path` on `addr`, or `None` if nothing answers any more.
async fn http_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    String::from_utf8_lossy(&raw)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// With the server stopped, the commands work on its data directory, under its lock; those
/// that need a server say so.
#[tokio::test]
async fn a_stopped_servers_data_is_administered_in_process() {
    let mut server = TestServer::start().await;
    server.register("alice").await;
    let config = test_config(server.dir.path());
    // While it runs, the data directory is locked.
    let locked = admin::run_offline(config.clone(), Request::UsersList).await;
    assert!(format!("{:#}", locked.unwrap_err()).contains("locked"));
    let dir: PathBuf = server.dir.path().to_path_buf();
    server.running.take().unwrap().stop().await.unwrap();
    assert!(
        !admin::socket_path(&dir).exists(),
        "the socket goes with the server"
    );

    let offline = |request| admin::run_offline(config.clone(), request);
    let users = offline(Request::UsersList).await.unwrap().unwrap();
    assert_eq!(names(&users, "name"), ["alice"]);
    let disable = Request::UsersDisable {
        name: "alice".into(),
    };
    offline(disable).await.unwrap().unwrap();
    let sessions = offline(Request::SessionsList).await.unwrap_err();
    assert!(format!("{sessions:#}").contains("needs a running server"));

    let running = parley_server::start(config.clone()).await.unwrap();
    let server = TestServer::adopt(running, server.dir);
    let mut c = server.text().await;
    let login = format!("LOGIN alice {PASSWORD}");
    assert_eq!(c.ask(&login).await.unwrap(), "ERR invalid-credentials");
    server.stop().await;
}
