//! Unsigned LEB128 varints: the compact integers of the saved index and the message blocks.

use anyhow::Context;

/// The most bytes a varint of 64 bits takes.
pub(super) const MAX_LEN: usize = 10;

/// Writes `v` at the start of `out`; returns how many bytes it took.
pub(super) fn put_into(out: &mut [u8; MAX_LEN], mut v: u64) -> usize {
    for (n, byte) in out.iter_mut().enumerate() {
        if v < 0x80 {
            *byte = v as u8;
            return n + 1;
        }
        *byte = v as u8 | 0x80;
        v >>= 7;
    }
    // Ten groups of seven bits hold any u64.
    MAX_LEN
}

pub(super) fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads one varint off the front of `blob`.
pub(super) fn take(blob: &mut &[u8]) -> anyhow::Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = blob.split_first().context("varint cut short")?;
        *blob = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    anyhow::bail!("varint too long")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_width_reads_back() {
        for v in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut out = Vec::new();
            super::put(&mut out, v);
            let mut fixed = [0; super::MAX_LEN];
            let n = super::put_into(&mut fixed, v);
            assert_eq!(fixed[..n], out[..]);
            let mut blob = &out[..];
            assert_eq!(super::take(&mut blob).unwrap(), v);
            assert!(blob.is_empty());
            assert!(
                super::take(&mut &out[..out.len() - 1]).is_err(),
                "{v} cut short"
            );
        }
    }
}
