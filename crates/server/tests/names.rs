//! The name profile over real sockets (docs/PROTOCOL.md, "Names"): new user and room names
//! are NFKC with nothing invisible and look like no taken name; display names carry no bidi
//! controls; names stored before the profile keep working.

mod common;

use common::{bytes, request, TestServer};
use parley_proto::binary::{code, Frame};
use serde_json::json;

const PASSWORD: &str = "correct-horse";

#[tokio::test]
async fn a_new_name_with_an_invisible_character_is_refused() {
    let server = TestServer::start().await;
    let mut c = server.text().await;

    let register = c.ask(&format!("REGISTER alice\u{200B} {PASSWORD}")).await;
    let login = c.ask("LOGIN bob\u{2066}").await;

    assert_eq!(register.unwrap(), "ERR invalid-username");
    assert_eq!(login.unwrap(), "ERR invalid-username");
    server.stop().await;
}

#[tokio::test]
async fn a_new_name_not_in_nfkc_is_refused() {
    let server = TestServer::start().await;
    let mut c = server.text().await;

    // Fullwidth letters, and "Zoë" with a combining diaeresis (NFD).
    let fullwidth = c.ask("LOGIN ａｌｉｃｅ").await.unwrap();
    let decomposed = c.ask("LOGIN Zoe\u{0308}").await.unwrap();
    let composed = c.ask("LOGIN Zoë").await.unwrap();

    assert_eq!(fullwidth, "ERR invalid-username");
    assert_eq!(decomposed, "ERR invalid-username");
    assert_eq!(composed, "OK");
    server.stop().await;
}

#[tokio::test]
async fn a_name_that_looks_like_an_account_is_taken_in_every_protocol() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut text = server.text().await;
    let mut binary = server.client().await;
    let mut json = server.json().await;

    let cyrillic = text.ask(&format!("REGISTER \u{0430}lice {PASSWORD}")).await;
    let capital_i = text.ask("LOGIN aIice").await;
    let digit_one = binary.login(1, "a1ice").await.unwrap();
    let register = json!({"command": "REGISTER", "data": "alic\u{0435}"});
    let json_answer = json.ask(&register.to_string()).await.unwrap();

    assert_eq!(cyrillic.unwrap(), "ERR username-taken");
    assert_eq!(capital_i.unwrap(), "ERR username-taken");
    assert_eq!(digit_one, code::USER_ALREADY_LOGGED);
    assert!(
        json_answer.contains("Username already taken"),
        "{json_answer}"
    );
    // Case is not folded: names are case-sensitive, as every seed compares them.
    assert_eq!(text.ask("LOGIN Alice").await.unwrap(), "OK");
    server.stop().await;
}

#[tokio::test]
async fn a_room_that_looks_like_another_room_is_refused() {
    let server = TestServer::start().await;
    let mut c = server.text_login("alice").await;
    assert_eq!(c.ask("JOIN #general").await.unwrap(), "OK");

    let lookalike = c.ask("JOIN #generaI").await.unwrap();
    let invisible = c.ask("JOIN #random\u{200D}").await.unwrap();
    let other = c.ask("JOIN #random").await.unwrap();

    assert_eq!(lookalike, "ERR invalid-username");
    assert_eq!(invisible, "ERR invalid-username");
    assert_eq!(other, "OK");
    server.stop().await;
}

#[tokio::test]
async fn a_display_name_with_a_bidi_override_is_refused() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut c = server.text().await;
    let login = c.ask(&format!("LOGIN alice {PASSWORD}")).await;
    assert_eq!(login.unwrap(), "OK");

    let reversed = c.ask("SETNAME \u{202E}nimda").await.unwrap();
    let emoji = c.ask("SETNAME 👩\u{200D}💻 Alice").await.unwrap();

    assert_eq!(reversed, "ERR invalid-username");
    assert_eq!(emoji, "OK");
    let mut binary = server.client().await;
    let login = Frame::LoginPassword {
        cid: 1,
        username: bytes("alice"),
        password: bytes(PASSWORD),
        device: bytes("tablet"),
        flags: 0,
    };
    assert_eq!(request(&mut binary, login).await, code::OK);
    let set = Frame::SetProfile {
        cid: 2,
        display_name: bytes("Ali\u{2067}ce"),
        avatar: bytes(""),
    };
    assert_eq!(request(&mut binary, set).await, code::INVALID_NAME);
    server.stop().await;
}

/// Names stored before the profile stay as they are: they log in, and new names are
/// compared with them.
#[tokio::test]
async fn names_stored_before_the_profile_keep_working() {
    let mut server = TestServer::start().await;
    server
        .restart_after(|dir| {
            let db = rusqlite::Connection::open(dir.join("parley.db")).unwrap();
            for name in ["a1ice", "bob\u{200B}"] {
                db.execute(
                    "INSERT INTO users (name, created_at) VALUES (?1, 0)",
                    [name],
                )
                .unwrap();
            }
        })
        .await;
    let mut c = server.text().await;

    assert_eq!(c.ask("LOGIN bob\u{200B}").await.unwrap(), "OK");
    let mut other = server.text().await;
    assert_eq!(other.ask("LOGIN a1ice").await.unwrap(), "OK");
    let mut new = server.text().await;
    assert_eq!(new.ask("LOGIN alice").await.unwrap(), "ERR username-taken");
    server.stop().await;
}
