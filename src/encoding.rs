//! Unpadded base64url, the alphabet of every token tether hands out, and lenient base64 for the
//! keys people paste into a configuration.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn sextet(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Unpadded base64url of `bytes`.
pub fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..=chunk.len() {
            let index = (n >> (18 - 6 * k)) & 63;
            out.push(char::from(
                ALPHABET.get(index as usize).copied().unwrap_or(b'A'),
            ));
        }
    }
    out
}

/// Decodes canonical unpadded base64url; anything else gives `None`.
pub fn base64url_decode(text: &[u8]) -> Option<Vec<u8>> {
    decode_with(text, sextet)
}

/// Decodes base64 in either alphabet, padded or not (how people write keys).
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let trimmed = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    decode_with(trimmed, |c| match c {
        b'+' => Some(62),
        b'/' => Some(63),
        other => sextet(other),
    })
}

fn decode_with(text: &[u8], value: impl Fn(u8) -> Option<u32>) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in text {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero, or two spellings would decode to the same bytes.
    (acc == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn known_vectors() {
        assert_eq!(base64url_encode(&[0; 16]), "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(base64url_encode(&[0xff; 16]), "_____________________w");
        assert_eq!(
            base64url_decode(b"_____________________w"),
            Some(vec![0xff; 16])
        );
        assert_eq!(base64url_encode(b""), "");
        assert_eq!(base64url_encode(b"f"), "Zg");
        assert_eq!(base64url_encode(b"fo"), "Zm8");
        assert_eq!(base64url_encode(b"foo"), "Zm9v");
    }

    #[test]
    fn base64_both_alphabets_and_padding() {
        let bytes: Vec<u8> = (0..=255).collect();
        let url = base64url_encode(&bytes);
        assert_eq!(base64url_decode(url.as_bytes()), Some(bytes.clone()));
        let std = url.replace('-', "+").replace('_', "/");
        assert_eq!(base64_decode(std.as_bytes()), Some(bytes.clone()));
        assert_eq!(base64_decode(format!("{std}=").as_bytes()), Some(bytes));
        assert_eq!(
            base64_decode(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Some(vec![0; 32])
        );
        assert_eq!(base64url_decode(b"A"), None);
        assert_eq!(base64url_decode(b"AB"), None, "non-zero leftover bits");
        assert_eq!(base64_decode(b"AA*A"), None);
    }
}
