//! The seed-000 binary codec, exercised the way the server and the clients use it.

use bytes::{Bytes, BytesMut};
use parley_proto::binary::{
    self, code, decode, encode_response, error_code, key, ContactEntry, Decoded, Event, Frame,
    FrameError, ListPage, RoomEntry, RoomInfoEntry, UserEntry,
};
use parley_proto::ErrorKind;
use proptest::prelude::*;

const MAX: usize = 65536;

/// The seed README's login of "user1" with correlation id 1.
const SEED_LOGIN: [u8; 18] = [
    0x00, 0x00, 0x00, 0x0E, // length 14
    0x01, // version
    0x00, 0x01, // key: login
    0x00, 0x00, 0x00, 0x01, // correlation id
    0x00, 0x05, b'u', b's', b'e', b'r', b'1', // username
];

fn buf(bytes: &[u8]) -> BytesMut {
    BytesMut::from(bytes)
}

fn encode(frame: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    frame.encode(&mut out).expect("strings fit in u16");
    out
}

/// A frame with the given version, key and body, length prefix computed.
fn raw(version: u8, key: u16, body: &[u8]) -> Vec<u8> {
    let mut out = ((3 + body.len()) as u32).to_be_bytes().to_vec();
    out.push(version);
    out.extend_from_slice(&key.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn decode_err(bytes: &[u8]) -> FrameError {
    decode(&mut buf(bytes), MAX).expect_err("frame must be refused")
}

fn sample_message() -> Frame {
    Frame::Message {
        cid: 7,
        message: Bytes::from_static(b"hello"),
        from: Bytes::from_static(b"alice"),
        to: Bytes::from_static(b"bob"),
        time: 1_700_000_000_123_456_789,
    }
}

// ---------------------------------------------------------------- the seed's bytes

#[test]
fn seed_login_example_decodes() {
    let mut b = buf(&SEED_LOGIN);
    let frame = decode(&mut b, MAX).unwrap().unwrap();
    assert_eq!(
        frame,
        Frame::Login {
            cid: 1,
            username: Bytes::from_static(b"user1")
        }
    );
    assert!(b.is_empty());
}

/// A listing's page is an optional last field: PROTOCOL.md's example, and the body of a
/// client that predates it (the cid alone) as the first page; a page cut short is refused.
#[test]
fn a_listing_page_is_optional() {
    let example = [
        0x00, 0x00, 0x00, 0x0e, 0x01, 0x00, 0x29, 0x00, 0x00, 0x00, 0x0e, 0x00, 0x03, b'b', b'o',
        b'b', 0x00, 0x64,
    ];
    let page = Some(ListPage {
        after: Bytes::from_static(b"bob"),
        limit: 100,
    });
    let frame = Frame::ListUsers { cid: 14, page };
    assert_eq!(&encode(&frame)[..], &example[..]);
    assert_eq!(decode(&mut buf(&example), MAX).unwrap(), Some(frame));
    let bare = raw(1, key::LIST_USERS, &14u32.to_be_bytes());
    let first = Frame::ListUsers {
        cid: 14,
        page: None,
    };
    assert_eq!(decode(&mut buf(&bare), MAX).unwrap(), Some(first));
    let cut = raw(1, key::LIST_ROOMS, &[0, 0, 0, 14, 0, 3, b'b']);
    assert!(matches!(decode_err(&cut), FrameError::Malformed { .. }));
}

#[test]
fn seed_login_example_encodes_to_identical_bytes() {
    let frame = Frame::Login {
        cid: 1,
        username: Bytes::from_static(b"user1"),
    };
    assert_eq!(&encode(&frame)[..], &SEED_LOGIN[..]);
}

#[test]
fn response_is_exactly_13_bytes() {
    let mut out = BytesMut::new();
    encode_response(0x0102_0304, code::USER_ALREADY_LOGGED, &mut out);
    assert_eq!(
        &out[..],
        &[0, 0, 0, 9, 1, 0, 3, 0x01, 0x02, 0x03, 0x04, 0x00, 0x04][..]
    );
    let via_frame = encode(&Frame::Response {
        cid: 0x0102_0304,
        code: code::USER_ALREADY_LOGGED,
    });
    assert_eq!(via_frame, out);
}

#[test]
fn protocol_md_message_example_round_trips() {
    // docs/PROTOCOL.md: alice sends "hi bob" to bob, cid 2, time 1700000000123456789.
    let bytes = [
        0x00, 0x00, 0x00, 0x23, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x02, // header, cid
        0x00, 0x06, b'h', b'i', b' ', b'b', b'o', b'b', // message
        0x00, 0x05, b'a', b'l', b'i', b'c', b'e', // from
        0x00, 0x03, b'b', b'o', b'b', // to
        0x17, 0x97, 0x9C, 0xFE, 0x3D, 0x85, 0xCD, 0x15, // time
    ];
    let frame = Frame::Message {
        cid: 2,
        message: Bytes::from_static(b"hi bob"),
        from: Bytes::from_static(b"alice"),
        to: Bytes::from_static(b"bob"),
        time: 1_700_000_000_123_456_789,
    };
    assert_eq!(decode(&mut buf(&bytes), MAX), Ok(Some(frame.clone())));
    assert_eq!(&encode(&frame)[..], &bytes[..]);
}

/// The moderation examples of docs/PROTOCOL.md ("Moderation and presence"), as written
/// there, are the codec's bytes.
#[test]
fn protocol_md_moderation_examples_are_the_codecs_bytes() {
    let hex = |s: &str| -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    };
    let b = |s: &'static str| Bytes::from_static(s.as_bytes());
    let examples = [
        (
            "00 00 00 11 01 00 52 00 00 00 0c 00 02 23 72 02 00 03 62 6f 62",
            Frame::Moderate {
                cid: 12,
                room: b("#r"),
                action: binary::action::KICK,
                user: b("bob"),
            },
        ),
        (
            "00 00 00 13 01 00 55 00 00 00 0d 00 02 23 72 00 00 00 00 00 00 00 07",
            Frame::DeleteMessage {
                cid: 13,
                target: b("#r"),
                seq: 7,
            },
        ),
        (
            "00 00 00 0e 01 00 59 00 00 00 0e 00 01 00 03 62 6f 62",
            Frame::Watch {
                cid: 14,
                users: vec![b("bob")],
            },
        ),
        (
            "00 00 00 15 01 00 5a 00 00 00 00 00 03 62 6f 62 01 00 00 00 00 00 00 00 00",
            Frame::Presence {
                cid: 0,
                user: b("bob"),
                online: true,
                last_seen: 0,
            },
        ),
        (
            "00 00 00 45 01 00 5b 00 00 00 00
             00 00 00 00 00 00 00 33   00 00 00 00 00 00 00 03   00 00 00 00 00 00 00 09   02
             00 05 61 6c 69 63 65   00 02 23 72   00 00 00 00 00 00 00 01   00 00
             00 00 00 00 00 00 00 2a   00 00 00 00 00 00 00 07",
            Frame::Deleted {
                cid: 0,
                event: Event {
                    id: 51,
                    conversation: 3,
                    seq: 9,
                    kind: binary::kind::ROOM,
                    from: b("alice"),
                    to: b("#r"),
                    time: 1,
                    message: Bytes::new(),
                },
                message_id: 42,
                message_seq: 7,
            },
        ),
    ];
    for (text, frame) in examples {
        let bytes = hex(text);
        assert_eq!(&encode(&frame)[..], &bytes[..], "{frame:?}");
        assert_eq!(decode(&mut buf(&bytes), MAX), Ok(Some(frame)));
    }
}

// ---------------------------------------------------------------- correlation test 0x09

#[test]
fn correlation_test_with_bare_cid_decodes() {
    let bytes = [0, 0, 0, 7, 1, 0, 9, 0, 0, 0, 42];
    assert_eq!(
        decode(&mut buf(&bytes), MAX),
        Ok(Some(Frame::CorrelationTest { cid: 42 }))
    );
    assert_eq!(&encode(&Frame::CorrelationTest { cid: 42 })[..], &bytes[..]);
}

#[test]
fn correlation_test_with_trailing_username_decodes() {
    let bytes = raw(1, 0x09, &[0, 0, 0, 42, 0, 5, b'u', b's', b'e', b'r', b'1']);
    let mut b = buf(&bytes);
    assert_eq!(
        decode(&mut b, MAX),
        Ok(Some(Frame::CorrelationTest { cid: 42 }))
    );
    assert!(b.is_empty(), "the whole frame is consumed");
}

// ---------------------------------------------------------------- messages

#[test]
fn message_round_trips() {
    let frame = sample_message();
    let mut b = encode(&frame);
    assert_eq!(decode(&mut b, MAX), Ok(Some(frame)));
    assert!(b.is_empty());
}

#[test]
fn message_decoding_hands_out_the_strings() {
    let mut out = BytesMut::new();
    binary::encode_message(3, "héllo".as_bytes(), b"alice", b"bob", 99, &mut out).unwrap();
    match decode(&mut out, MAX).unwrap().unwrap() {
        Frame::Message {
            cid,
            message,
            from,
            to,
            time,
        } => {
            assert_eq!(cid, 3);
            assert_eq!(&message[..], "héllo".as_bytes());
            assert_eq!(&from[..], b"alice");
            assert_eq!(&to[..], b"bob");
            assert_eq!(time, 99);
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

#[test]
fn message_time_is_preserved_exactly() {
    for time in [0, 1, 1_700_000_000_123_456_789, u64::MAX - 1, u64::MAX] {
        let mut b = BytesMut::new();
        binary::encode_message(1, b"m", b"a", b"b", time, &mut b).unwrap();
        assert_eq!(&b[b.len() - 8..], &time.to_be_bytes()[..]);
        match decode(&mut b, MAX).unwrap().unwrap() {
            Frame::Message { time: got, .. } => assert_eq!(got, time),
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

#[test]
fn message_body_is_opaque_bytes() {
    let frame = Frame::Message {
        cid: 1,
        message: Bytes::from_static(&[0xff, 0x00, 0xfe, b'\n']),
        from: Bytes::from_static(b"a"),
        to: Bytes::from_static(b"b"),
        time: 0,
    };
    assert_eq!(decode(&mut encode(&frame), MAX), Ok(Some(frame)));
}

#[test]
fn encode_refuses_a_string_longer_than_u16() {
    let long = vec![b'x'; u16::MAX as usize + 1];
    let mut out = BytesMut::new();
    assert!(binary::encode_message(1, &long, b"a", b"b", 0, &mut out).is_err());
}

// ---------------------------------------------------------------- partial input

#[test]
fn every_proper_prefix_is_incomplete_and_left_intact() {
    let whole = encode(&sample_message());
    for cut in 0..whole.len() {
        let mut b = buf(&whole[..cut]);
        assert_eq!(decode(&mut b, MAX), Ok(None), "prefix of {cut} bytes");
        assert_eq!(&b[..], &whole[..cut], "prefix of {cut} bytes left intact");
    }
    let mut b = whole.clone();
    assert_eq!(decode(&mut b, MAX), Ok(Some(sample_message())));
}

#[test]
fn feeding_one_byte_at_a_time_decodes_once_complete() {
    let whole = encode(&sample_message());
    let mut b = BytesMut::new();
    for (i, byte) in whole.iter().enumerate() {
        b.extend_from_slice(&[*byte]);
        let got = decode(&mut b, MAX).unwrap();
        if i + 1 < whole.len() {
            assert_eq!(got, None);
        } else {
            assert_eq!(got, Some(sample_message()));
        }
    }
    assert!(b.is_empty());
}

// ---------------------------------------------------------------- several frames

#[test]
fn several_frames_in_one_buffer_decode_in_order() {
    let frames = [
        Frame::Login {
            cid: 1,
            username: Bytes::from_static(b"alice"),
        },
        sample_message(),
        Frame::CorrelationTest { cid: 3 },
        Frame::Response { cid: 4, code: 1 },
    ];
    let mut b = BytesMut::new();
    for f in &frames {
        f.encode(&mut b).unwrap();
    }
    for f in &frames {
        assert_eq!(decode(&mut b, MAX).as_ref(), Ok(&Some(f.clone())));
    }
    assert_eq!(decode(&mut b, MAX), Ok(None));
    assert!(b.is_empty());
}

#[test]
fn bad_frame_in_the_middle_is_consumed_and_the_next_decodes() {
    let mut b = BytesMut::new();
    Frame::CorrelationTest { cid: 1 }.encode(&mut b).unwrap();
    b.extend_from_slice(&raw(1, 0x77, &[0, 0, 0, 2])); // unknown key
    Frame::CorrelationTest { cid: 3 }.encode(&mut b).unwrap();

    assert_eq!(
        decode(&mut b, MAX),
        Ok(Some(Frame::CorrelationTest { cid: 1 }))
    );
    let err = decode(&mut b, MAX).unwrap_err();
    assert!(!err.is_fatal());
    assert_eq!(err.correlation_id(), Some(2));
    assert_eq!(
        decode(&mut b, MAX),
        Ok(Some(Frame::CorrelationTest { cid: 3 }))
    );
    assert!(b.is_empty());
}

// ---------------------------------------------------------------- malformed input

#[test]
fn length_above_max_is_fatal_as_soon_as_the_prefix_arrives() {
    let len = (MAX + 1) as u32;
    let mut b = buf(&len.to_be_bytes());
    let err = decode(&mut b, MAX).unwrap_err();
    assert_eq!(
        err,
        FrameError::TooLong {
            len: MAX + 1,
            max: MAX
        }
    );
    assert!(err.is_fatal());
    assert_eq!(err.correlation_id(), None);
    assert!(b.capacity() < MAX, "the body was never reserved");
}

#[test]
fn length_u32_max_is_too_long() {
    let err = decode_err(&[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        err,
        FrameError::TooLong {
            len: u32::MAX as usize,
            max: MAX
        }
    );
    assert!(err.is_fatal());
}

#[test]
fn length_equal_to_max_is_accepted() {
    // A login whose username fills the frame exactly.
    let name = vec![b'n'; MAX - 3 - 4 - 2];
    let mut b = encode(&Frame::Login {
        cid: 1,
        username: Bytes::from(name.clone()),
    });
    assert_eq!(b.len(), 4 + MAX);
    assert_eq!(
        decode(&mut b, MAX),
        Ok(Some(Frame::Login {
            cid: 1,
            username: Bytes::from(name)
        }))
    );
}

#[test]
fn length_below_header_is_fatal_too_short() {
    for len in 0u32..3 {
        let err = decode_err(&len.to_be_bytes());
        assert_eq!(err, FrameError::TooShort { len: len as usize });
        assert!(err.is_fatal());
        assert_eq!(err.correlation_id(), None);
    }
}

#[test]
fn unknown_version_with_cid() {
    let err = decode_err(&raw(2, 0x01, &[0, 0, 0, 5, 0, 1, b'a']));
    assert_eq!(
        err,
        FrameError::UnknownVersion {
            version: 2,
            cid: Some(5)
        }
    );
    assert!(!err.is_fatal());
    assert_eq!(err.correlation_id(), Some(5));
    assert_eq!(err.kind(), ErrorKind::UnknownCommand);
}

#[test]
fn unknown_version_without_cid() {
    let err = decode_err(&raw(0, 0x01, &[0, 0, 5]));
    assert_eq!(
        err,
        FrameError::UnknownVersion {
            version: 0,
            cid: None
        }
    );
    assert!(!err.is_fatal());
    assert_eq!(err.correlation_id(), None);
}

#[test]
fn unknown_key_with_cid() {
    let err = decode_err(&raw(1, 0x0004, &[0, 0, 1, 0]));
    assert_eq!(
        err,
        FrameError::UnknownKey {
            key: 4,
            cid: Some(256)
        }
    );
    assert!(!err.is_fatal());
    assert_eq!(err.correlation_id(), Some(256));
    assert_eq!(err.kind(), ErrorKind::UnknownCommand);
}

#[test]
fn unknown_key_without_cid() {
    let err = decode_err(&raw(1, 0xABCD, &[]));
    assert_eq!(
        err,
        FrameError::UnknownKey {
            key: 0xABCD,
            cid: None
        }
    );
    assert!(!err.is_fatal());
    assert_eq!(err.correlation_id(), None);
}

#[test]
fn login_with_string_running_past_the_end_is_malformed() {
    // Username length says 9, only 5 bytes follow.
    let err = decode_err(&raw(
        1,
        0x01,
        &[0, 0, 0, 8, 0, 9, b'u', b's', b'e', b'r', b'1'],
    ));
    assert!(matches!(
        err,
        FrameError::Malformed {
            key: 0x01,
            cid: Some(8),
            ..
        }
    ));
    assert!(!err.is_fatal());
    assert_eq!(err.correlation_id(), Some(8));
    assert_eq!(err.kind(), ErrorKind::Malformed);
}

#[test]
fn message_missing_its_time_is_malformed() {
    let mut whole = BytesMut::new();
    binary::encode_message(11, b"hi", b"a", b"b", 5, &mut whole).unwrap();
    // Drop the 8 time bytes and fix up the length prefix.
    let body = &whole[7..whole.len() - 8];
    let err = decode_err(&raw(1, 0x02, body));
    assert!(matches!(
        err,
        FrameError::Malformed {
            key: 0x02,
            cid: Some(11),
            ..
        }
    ));
    assert!(!err.is_fatal());
    assert_eq!(err.correlation_id(), Some(11));
}

#[test]
fn login_with_trailing_bytes_is_malformed() {
    let err = decode_err(&raw(1, 0x01, &[0, 0, 0, 4, 0, 1, b'a', 0xEE]));
    assert!(matches!(
        err,
        FrameError::Malformed {
            key: 0x01,
            cid: Some(4),
            ..
        }
    ));
    assert!(!err.is_fatal());
    assert_eq!(err.correlation_id(), Some(4));
}

#[test]
fn message_with_trailing_bytes_is_malformed_read_either_way() {
    let mut whole = BytesMut::new();
    binary::encode_message(11, b"hi", b"a", b"b", 5, &mut whole).unwrap();
    let bytes = raw(1, 0x02, &[&whole[7..], &[0xEE]].concat());
    let refused = FrameError::Malformed {
        key: 0x02,
        cid: Some(11),
        reason: "trailing bytes after the last field",
    };
    assert_eq!(decode(&mut buf(&bytes), MAX), Err(refused.clone()));
    assert_eq!(binary::decode_view(&mut buf(&bytes), MAX), Err(refused));
}

#[test]
fn message_with_empty_body_is_malformed_without_cid() {
    let mut b = buf(&raw(1, 0x02, &[]));
    let err = decode(&mut b, MAX).unwrap_err();
    assert!(matches!(
        err,
        FrameError::Malformed {
            key: 0x02,
            cid: None,
            ..
        }
    ));
    assert!(!err.is_fatal());
    assert_eq!(err.correlation_id(), None);
    assert!(b.is_empty(), "the bad frame is consumed");
}

// ---------------------------------------------------------------- keys

/// A frame of `key` with cid 7 and every other field zero, empty or an empty list: the
/// shortest run of zero bytes after the cid that decodes. `None` if none up to 64 does.
fn zero_frame(key: u16) -> Option<(Frame, Vec<u8>)> {
    (0..=64).find_map(|zeros| {
        let mut body = vec![0, 0, 0, 7];
        body.resize(4 + zeros, 0);
        let bytes = raw(1, key, &body);
        let frame = decode(&mut buf(&bytes), MAX).ok()??;
        Some((frame, bytes))
    })
}

#[test]
fn every_key_round_trips_through_its_frame() {
    assert_eq!(key::ALL.len(), 54, "the frames documented in PROTOCOL.md");
    for &k in key::ALL {
        let (frame, bytes) = zero_frame(k).unwrap_or_else(|| panic!("key {k:#06x} decodes"));
        assert_eq!(
            frame.key(),
            k,
            "{frame:?} reports the key it was read under"
        );
        assert_eq!(frame.cid(), 7, "{frame:?}");
        assert_eq!(&encode(&frame)[..], &bytes[..], "{frame:?} encodes back");
    }
}

#[test]
fn keys_are_distinct_and_in_their_ranges() {
    let ranges = [
        0x01..=0x09,
        0x10..=0x18,
        0x20..=0x2F,
        0x30..=0x35,
        0x40..=0x45,
        0x50..=0x5C,
    ];
    assert!(key::ALL.windows(2).all(|w| w[0] < w[1]), "{:x?}", key::ALL);
    for &k in key::ALL {
        assert!(ranges.iter().any(|r| r.contains(&k)), "key {k:#06x}");
    }
    assert_eq!(
        (
            key::LOGIN,
            key::MESSAGE,
            key::RESPONSE,
            key::CORRELATION_TEST
        ),
        (0x01, 0x02, 0x03, 0x09),
        "the seed's keys"
    );
}

#[test]
fn every_other_key_is_unknown() {
    for k in 0..=u16::MAX {
        if key::ALL.contains(&k) {
            continue;
        }
        assert_eq!(
            decode(&mut buf(&raw(1, k, &[0, 0, 0, 7, 0, 0])), MAX),
            Err(FrameError::UnknownKey {
                key: k,
                cid: Some(7)
            })
        );
    }
}

// ---------------------------------------------------------------- response codes

#[test]
fn error_codes_are_distinct_and_match_the_seed() {
    let kinds = [
        ErrorKind::Internal,
        ErrorKind::UserNotFound,
        ErrorKind::AlreadyLoggedIn,
        ErrorKind::NotLoggedIn,
        ErrorKind::Forbidden,
        ErrorKind::InvalidName,
        ErrorKind::Malformed,
        ErrorKind::UnknownCommand,
        ErrorKind::ShuttingDown,
        ErrorKind::NotOperator,
        ErrorKind::Banned,
        ErrorKind::Muted,
        ErrorKind::InviteOnly,
        ErrorKind::Blocked,
        ErrorKind::MessageNotFound,
        ErrorKind::Unsupported,
    ];
    let mut codes: Vec<u16> = kinds.iter().map(|k| error_code(*k)).collect();
    codes.push(code::OK);
    let mut unique = codes.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        codes.len(),
        "codes {codes:?} are not distinct"
    );

    assert_eq!(code::OK, 0x01);
    assert_eq!(error_code(ErrorKind::UserNotFound), 0x03);
    assert_eq!(error_code(ErrorKind::AlreadyLoggedIn), 0x04);
}

#[test]
fn error_codes_follow_the_documented_table() {
    assert_eq!(error_code(ErrorKind::Internal), 0x02);
    assert_eq!(error_code(ErrorKind::NotLoggedIn), 0x05);
    assert_eq!(error_code(ErrorKind::Forbidden), 0x06);
    assert_eq!(error_code(ErrorKind::InvalidName), 0x07);
    assert_eq!(error_code(ErrorKind::Malformed), 0x08);
    assert_eq!(error_code(ErrorKind::UnknownCommand), 0x09);
    assert_eq!(error_code(ErrorKind::ShuttingDown), 0x0A);
    assert_eq!(error_code(ErrorKind::NotOperator), 0x18);
    assert_eq!(error_code(ErrorKind::Banned), 0x19);
    assert_eq!(error_code(ErrorKind::Muted), 0x1A);
    assert_eq!(error_code(ErrorKind::InviteOnly), 0x1B);
    assert_eq!(error_code(ErrorKind::Blocked), 0x1C);
    assert_eq!(error_code(ErrorKind::MessageNotFound), 0x1D);
    assert_eq!(error_code(ErrorKind::Unsupported), 0x1E);
}

// ---------------------------------------------------------------- properties

fn any_string() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn any_event() -> impl Strategy<Value = Event> {
    (
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u8>()),
        (any_string(), any_string(), any::<u64>(), any_string()),
    )
        .prop_map(
            |((id, conversation, seq, kind), (from, to, time, message))| Event {
                id,
                conversation,
                seq,
                kind,
                from,
                to,
                time,
                message,
            },
        )
}

fn any_user() -> impl Strategy<Value = UserEntry> {
    (any_string(), any::<bool>(), any::<u64>()).prop_map(|(name, online, last_seen)| UserEntry {
        name,
        online,
        last_seen,
    })
}

/// A listing's optional page: absent (the first page) or named.
fn list_page() -> impl Strategy<Value = Option<ListPage>> {
    prop::option::of(
        (any_string(), any::<u16>()).prop_map(|(after, limit)| ListPage { after, limit }),
    )
}

fn list<T: std::fmt::Debug>(item: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<T>> {
    prop::collection::vec(item, 0..6)
}

/// The seed's four frames: what the seed clients send and receive.
fn seed_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u32>(), any_string()).prop_map(|(cid, username)| Frame::Login { cid, username }),
        (
            any::<u32>(),
            any_string(),
            any_string(),
            any_string(),
            any::<u64>()
        )
            .prop_map(|(cid, message, from, to, time)| Frame::Message {
                cid,
                message,
                from,
                to,
                time
            }),
        (any::<u32>(), any::<u16>()).prop_map(|(cid, code)| Frame::Response { cid, code }),
        any::<u32>().prop_map(|cid| Frame::CorrelationTest { cid }),
    ]
}

/// Accounts, devices and profiles (0x10–0x18).
fn account_frame() -> impl Strategy<Value = Frame> {
    let s = any_string;
    prop_oneof![
        (any::<u32>(), s(), s()).prop_map(|(cid, username, password)| Frame::Register {
            cid,
            username,
            password
        }),
        (any::<u32>(), s(), s(), s(), any::<u8>()).prop_map(
            |(cid, username, password, device, flags)| Frame::LoginPassword {
                cid,
                username,
                password,
                device,
                flags
            }
        ),
        (any::<u32>(), s()).prop_map(|(cid, token)| Frame::LoginToken { cid, token }),
        (any::<u32>(), s(), any::<u64>()).prop_map(|(cid, token, expires_at)| Frame::Token {
            cid,
            token,
            expires_at
        }),
        (any::<u32>(), any::<u8>()).prop_map(|(cid, scope)| Frame::Logout { cid, scope }),
        (any::<u32>(), s(), s()).prop_map(|(cid, old, new)| Frame::ChangePassword {
            cid,
            old,
            new
        }),
        (any::<u32>(), s(), s()).prop_map(|(cid, display_name, avatar)| Frame::SetProfile {
            cid,
            display_name,
            avatar
        }),
        (any::<u32>(), s()).prop_map(|(cid, username)| Frame::GetProfile { cid, username }),
        (any::<u32>(), s(), s(), s()).prop_map(|(cid, username, display_name, avatar)| {
            Frame::Profile {
                cid,
                username,
                display_name,
                avatar,
            }
        }),
    ]
}

/// Rooms, many recipients, lists, history and acks (0x20–0x2F).
fn messaging_frame() -> impl Strategy<Value = Frame> {
    let s = any_string;
    let room =
        (any_string(), any::<u32>(), any::<u32>()).prop_map(|(name, members, online)| RoomEntry {
            name,
            members,
            online,
        });
    prop_oneof![
        (any::<u32>(), s()).prop_map(|(cid, room)| Frame::Join { cid, room }),
        (any::<u32>(), s()).prop_map(|(cid, room)| Frame::Leave { cid, room }),
        (any::<u32>(), s(), s(), any::<u64>()).prop_map(|(cid, room, message, time)| {
            Frame::SendRoom {
                cid,
                room,
                message,
                time,
            }
        }),
        (any::<u32>(), list(s()), s(), any::<u64>()).prop_map(|(cid, to, message, time)| {
            Frame::SendMany {
                cid,
                to,
                message,
                time,
            }
        }),
        (any::<u32>(), s(), any::<u64>()).prop_map(|(cid, message, time)| Frame::SendAll {
            cid,
            message,
            time
        }),
        (any::<u32>(), list_page()).prop_map(|(cid, page)| Frame::ListRooms { cid, page }),
        (any::<u32>(), list(room)).prop_map(|(cid, rooms)| Frame::Rooms { cid, rooms }),
        (any::<u32>(), s()).prop_map(|(cid, room)| Frame::ListMembers { cid, room }),
        (any::<u32>(), list(any_user())).prop_map(|(cid, members)| Frame::Members { cid, members }),
        (any::<u32>(), list_page()).prop_map(|(cid, page)| Frame::ListUsers { cid, page }),
        (any::<u32>(), list(any_user())).prop_map(|(cid, users)| Frame::Users { cid, users }),
        (any::<u32>(), s(), any::<u8>(), any::<u64>(), any::<u16>()).prop_map(
            |(cid, target, mode, value, limit)| Frame::History {
                cid,
                target,
                mode,
                value,
                limit
            }
        ),
        (any::<u32>(), list(any_event()))
            .prop_map(|(cid, events)| Frame::HistoryPage { cid, events }),
        any::<u32>().prop_map(|cid| Frame::EnableAcks { cid }),
        (any::<u32>(), any_event()).prop_map(|(cid, event)| Frame::Event { cid, event }),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(cid, conversation, seq)| {
            Frame::Ack {
                cid,
                conversation,
                seq,
            }
        }),
    ]
}

/// Search and contacts (0x30–0x35).
fn contacts_frame() -> impl Strategy<Value = Frame> {
    let s = any_string;
    let contact = (any_string(), any::<u8>(), any::<bool>(), any::<u64>()).prop_map(
        |(name, state, online, last_seen)| ContactEntry {
            name,
            state,
            online,
            last_seen,
        },
    );
    prop_oneof![
        (any::<u32>(), s(), any::<u16>()).prop_map(|(cid, prefix, limit)| Frame::Search {
            cid,
            prefix,
            limit
        }),
        (any::<u32>(), s()).prop_map(|(cid, name)| Frame::ContactRequest { cid, name }),
        (any::<u32>(), s(), any::<u8>()).prop_map(|(cid, name, accept)| Frame::ContactAnswer {
            cid,
            name,
            accept
        }),
        (any::<u32>(), s()).prop_map(|(cid, name)| Frame::ContactRemove { cid, name }),
        any::<u32>().prop_map(|cid| Frame::ListContacts { cid }),
        (any::<u32>(), list(contact)).prop_map(|(cid, contacts)| Frame::Contacts { cid, contacts }),
    ]
}

/// Files (0x40–0x45).
fn files_frame() -> impl Strategy<Value = Frame> {
    let s = any_string;
    prop_oneof![
        (any::<u32>(), s(), any::<u64>()).prop_map(|(cid, sha256, size)| Frame::FileOffer {
            cid,
            sha256,
            size
        }),
        (any::<u32>(), any::<u8>(), any::<u64>())
            .prop_map(|(cid, have, offset)| { Frame::FileStatus { cid, have, offset } }),
        (any::<u32>(), s(), any::<u64>(), any::<u64>(), s()).prop_map(
            |(cid, sha256, size, offset, data)| Frame::FileChunk {
                cid,
                sha256,
                size,
                offset,
                data
            }
        ),
        (
            (any::<u32>(), any::<u8>(), s(), s()),
            (s(), s(), s(), any::<u64>())
        )
            .prop_map(
                |((cid, target_kind, target, sha256), (name, mime, caption, time))| {
                    Frame::SendFile {
                        cid,
                        target_kind,
                        target,
                        sha256,
                        name,
                        mime,
                        caption,
                        time,
                    }
                }
            ),
        (any::<u32>(), s(), any::<u64>(), any::<u32>()).prop_map(
            |(cid, sha256, offset, length)| Frame::Download {
                cid,
                sha256,
                offset,
                length
            }
        ),
        (any::<u32>(), any::<u64>(), s()).prop_map(|(cid, offset, data)| Frame::FileData {
            cid,
            offset,
            data
        }),
    ]
}

/// Moderation and presence (0x50–0x5C).
fn moderation_frame() -> impl Strategy<Value = Frame> {
    let s = any_string;
    let info = (
        (s(), s(), any::<bool>(), s(), any::<u8>()),
        (any::<bool>(), list(s()), list(s()), list(s())),
    )
        .prop_map(
            |((room, topic, invite_only, owner, rank), (member, operators, banned, muted))| {
                RoomInfoEntry {
                    room,
                    topic,
                    invite_only,
                    owner,
                    rank,
                    member,
                    operators,
                    banned,
                    muted,
                }
            },
        );
    prop_oneof![
        (any::<u32>(), s(), s()).prop_map(|(cid, room, topic)| Frame::SetTopic {
            cid,
            room,
            topic
        }),
        (any::<u32>(), s(), any::<bool>()).prop_map(|(cid, room, on)| Frame::SetInviteOnly {
            cid,
            room,
            on
        }),
        (any::<u32>(), s(), any::<u8>(), s()).prop_map(|(cid, room, action, user)| {
            Frame::Moderate {
                cid,
                room,
                action,
                user,
            }
        }),
        (any::<u32>(), s()).prop_map(|(cid, room)| Frame::GetRoomInfo { cid, room }),
        (any::<u32>(), info).prop_map(|(cid, info)| Frame::RoomInfo { cid, info }),
        (any::<u32>(), s(), any::<u64>()).prop_map(|(cid, target, seq)| Frame::DeleteMessage {
            cid,
            target,
            seq
        }),
        (any::<u32>(), s(), any::<bool>()).prop_map(|(cid, user, on)| Frame::Block {
            cid,
            user,
            on
        }),
        any::<u32>().prop_map(|cid| Frame::ListBlocks { cid }),
        (any::<u32>(), list(s())).prop_map(|(cid, users)| Frame::Blocks { cid, users }),
        (any::<u32>(), list(s())).prop_map(|(cid, users)| Frame::Watch { cid, users }),
        (any::<u32>(), s(), any::<bool>(), any::<u64>()).prop_map(
            |(cid, user, online, last_seen)| Frame::Presence {
                cid,
                user,
                online,
                last_seen
            }
        ),
        (any::<u32>(), any_event(), any::<u64>(), any::<u64>()).prop_map(
            |(cid, event, message_id, message_seq)| Frame::Deleted {
                cid,
                event,
                message_id,
                message_seq
            }
        ),
        (any::<u32>(), s(), any::<u8>(), s(), s(), s()).prop_map(
            |(cid, room, change, user, by, text)| Frame::Notice {
                cid,
                room,
                change,
                user,
                by,
                text
            }
        ),
    ]
}

/// Any of the 54 frames, the seed's four most often.
fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        4 => seed_frame(),
        1 => account_frame(),
        1 => messaging_frame(),
        1 => contacts_frame(),
        1 => files_frame(),
        1 => moderation_frame(),
    ]
}

/// Random bytes mixed with valid frames and frames of random version, key and body, so that
/// the decoder gets past the first length prefix often enough to matter.
fn byte_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..16),
        any_frame().prop_map(|f| encode(&f).to_vec()),
        // A whole frame with bytes after its last field, inside its length.
        (any_frame(), prop::collection::vec(any::<u8>(), 1..4)).prop_map(|(f, extra)| {
            let whole = encode(&f);
            raw(whole[4], f.key(), &[&whole[7..], &extra[..]].concat())
        }),
        (
            prop_oneof![Just(1u8), any::<u8>()],
            prop_oneof![
                (0u16..12),
                (0x10u16..0x19),
                (0x20u16..0x30),
                (0x30u16..0x36),
                (0x40u16..0x46),
                any::<u16>()
            ],
            prop::collection::vec(any::<u8>(), 0..48),
        )
            .prop_map(|(version, key, body)| raw(version, key, &body)),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn any_frame_round_trips(frame in any_frame()) {
        let mut b = encode(&frame);
        prop_assert_eq!(decode(&mut b, MAX), Ok(Some(frame)));
        prop_assert!(b.is_empty());
    }

    #[test]
    fn encoded_frame_split_anywhere_decodes_the_same(
        frame in any_frame(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let whole = encode(&frame);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(whole.len() + 1)).collect();
        points.push(whole.len());
        points.sort_unstable();

        let mut b = BytesMut::new();
        let mut start = 0;
        let mut decoded = None;
        for end in points {
            b.extend_from_slice(&whole[start..end]);
            start = end;
            if let Some(f) = decode(&mut b, MAX).unwrap() {
                prop_assert!(decoded.is_none(), "decoded twice");
                prop_assert_eq!(end, whole.len(), "decoded before the last byte");
                decoded = Some(f);
            }
        }
        prop_assert_eq!(decoded, Some(frame));
        prop_assert!(b.is_empty());
    }

    /// The server's way of reading frames takes exactly what `decode` takes, frame for
    /// frame and error for error, a message's fields the same bytes.
    #[test]
    fn decode_view_reads_any_bytes_as_decode_does(
        soup in byte_soup(),
        max in prop_oneof![Just(MAX), 0usize..700],
    ) {
        let (mut a, mut b) = (buf(&soup), buf(&soup));
        loop {
            let plain = decode(&mut a, max);
            let viewed = binary::decode_view(&mut b, max);
            prop_assert_eq!(&a, &b);
            match (plain, viewed) {
                (Ok(None), Ok(None)) => break,
                (Ok(Some(Frame::Message { cid, message, from, to, time })), Ok(Some(Decoded::Message(v)))) => {
                    prop_assert_eq!((cid, &message[..], &from[..], &to[..], time),
                                    (v.cid, v.message(), v.from(), v.to(), v.time));
                    prop_assert_eq!(v.message_bytes(), message);
                }
                (Ok(Some(frame)), Ok(Some(Decoded::Frame(other)))) => {
                    let is_message = matches!(frame, Frame::Message { .. });
                    prop_assert!(!is_message, "a message decoded as a frame");
                    prop_assert_eq!(frame, other);
                }
                (Err(e), Err(f)) => {
                    prop_assert_eq!(&e, &f);
                    if e.is_fatal() {
                        break;
                    }
                }
                (plain, viewed) => {
                    prop_assert!(false, "decode {:?}, decode_view {:?}", plain, viewed)
                }
            }
        }
    }

    #[test]
    fn byte_soup_in_any_chunks_never_panics(
        soup in byte_soup(),
        chunks in prop::collection::vec(1usize..64, 1..64),
        max in prop_oneof![Just(MAX), 0usize..700],
    ) {
        let mut b = BytesMut::new();
        let mut rest = &soup[..];
        let mut chunk = chunks.iter().cycle();
        'feed: while !rest.is_empty() {
            let n = (*chunk.next().unwrap()).min(rest.len());
            b.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            loop {
                let before = b.len();
                match decode(&mut b, max) {
                    Ok(None) => break,
                    Ok(Some(frame)) => {
                        let consumed = before - b.len();
                        prop_assert!(consumed - 4 <= max, "frame {frame:?} longer than {max}");
                        // A 0x09 may carry ignored trailing bytes; every other frame is exact.
                        let encoded = encode(&frame).len();
                        if matches!(frame, Frame::CorrelationTest { .. }) {
                            prop_assert!(encoded <= consumed);
                        } else {
                            prop_assert_eq!(encoded, consumed);
                        }
                    }
                    Err(e) if e.is_fatal() => break 'feed,
                    Err(_) => prop_assert!(before - b.len() <= 4 + max),
                }
            }
        }
    }
}

#[test]
fn a_list_longer_than_its_u16_count_is_cut_at_65535_and_stays_decodable() {
    let users: Vec<UserEntry> = (0..70_000u32)
        .map(|_| UserEntry {
            name: Bytes::from_static(b"u"),
            online: false,
            last_seen: 0,
        })
        .collect();
    let mut buf = BytesMut::new();
    Frame::Users { cid: 1, users }.encode(&mut buf).unwrap();
    match binary::decode(&mut buf, usize::MAX >> 1) {
        Ok(Some(Frame::Users { users, .. })) => assert_eq!(users.len(), 65_535),
        other => panic!("expected a Users frame, got {other:?}"),
    }
    assert!(buf.is_empty(), "no bytes left over after the frame");
}
