//! JSON lines: the request parsing the server does, on any bytes (no panic), and the
//! encoder on any JSON value: one line, `<`, `>` and `&` escaped as Go escapes them, that
//! reads back as the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_proto::json::{self, Value};

fuzz_target!(|data: &[u8]| {
    let _ = json::parse(data);
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mut out = Vec::new();
    json::encode_line(&value, &mut out);
    let (last, line) = out.split_last().expect("a line");
    assert_eq!(*last, b'\n');
    assert!(
        !line
            .iter()
            .any(|b| matches!(b, b'\n' | b'\r' | b'<' | b'>' | b'&')),
        "{:?}",
        String::from_utf8_lossy(line)
    );
    // Floats need not read back bit for bit (serde_json's default float parser).
    if !has_float(&value) {
        let back: Value = serde_json::from_slice(line).expect("the line is JSON");
        assert_eq!(back, value);
    }
});

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}
