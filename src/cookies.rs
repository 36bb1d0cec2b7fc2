//! Reading tether's cookie from a request and writing the Set-Cookie that issues it.

use crate::config::{CookieSettings, LifetimeType, SameSite};
use cookie::Cookie;

/// At most this many cookies of tether's name are tried per request. A client may send the
/// name several times (two paths, or a stale copy); trying every one would let a request buy
/// unbounded table lookups.
pub const MAX_CANDIDATES: usize = 4;

/// The `name=value` pairs of a `Cookie` header, names and values trimmed, double quotes
/// around a value dropped. Parsed by hand, on bytes: the `cookie` crate's parser carries date
/// parsing for `Expires` (40 KB of module) that a request's `Cookie` header never needs.
fn pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|&b| b == b';').filter_map(|part| {
        let eq = part.iter().position(|&b| b == b'=')?;
        let (name, value) = part.split_at(eq);
        let value = value.get(1..)?.trim_ascii();
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        Some((name.trim_ascii(), value))
    })
}

/// The values of the cookies named `name`, in the order sent, at most `MAX_CANDIDATES`. Any
/// bytes at all are accepted: what does not parse is skipped, never an error.
pub fn values(header: &[u8], name: &str) -> Vec<String> {
    pairs(header)
        .filter(|(n, _)| *n == name.as_bytes())
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .map(str::to_string)
        .take(MAX_CANDIDATES)
        .collect()
}

/// The `Cookie` header without the cookies named `name`: `None` if none was there (leave the
/// header alone), `Some(empty)` if nothing else is left (remove the header).
pub fn without(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut removed = false;
    let mut kept: Vec<&[u8]> = Vec::new();
    for part in header.split(|&b| b == b';') {
        let trimmed = part.trim_ascii();
        let part_name = trimmed
            .split(|&b| b == b'=')
            .next()
            .unwrap_or(trimmed)
            .trim_ascii();
        if part_name == name.as_bytes() {
            removed = true;
        } else if !trimmed.is_empty() {
            kept.push(trimmed);
        }
    }
    removed.then(|| kept.join(&b"; "[..]))
}

/// The value a `Set-Cookie` header gives to the cookie `name`, unless it deletes it
/// (`Max-Age` of zero or less, or an empty value).
pub fn set_cookie_value(header: &[u8], name: &str) -> Option<String> {
    let mut parts = pairs(header);
    let (first_name, value) = parts.next()?;
    if first_name != name.as_bytes() || value.is_empty() {
        return None;
    }
    let deletes = parts.any(|(attr, v)| {
        attr.eq_ignore_ascii_case(b"max-age")
            && (v.first() == Some(&b'-') || v.iter().all(|&b| b == b'0'))
    });
    if deletes {
        return None;
    }
    std::str::from_utf8(value).ok().map(str::to_string)
}

/// The Set-Cookie value that hands `value` to the client. `max_age_s` is used only for
/// permanent cookies.
pub fn set_cookie(
    name: &str,
    value: &str,
    settings: &CookieSettings,
    max_age_s: Option<u64>,
) -> String {
    let mut c = Cookie::build((name.to_string(), value.to_string()))
        .path(settings.path.clone())
        .http_only(settings.http_only)
        .secure(settings.secure)
        .same_site(match settings.same_site {
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::None => cookie::SameSite::None,
        });
    if let Some(domain) = &settings.domain {
        c = c.domain(domain.clone());
    }
    if let (LifetimeType::Permanent, Some(secs)) = (settings.lifetime_type, max_age_s) {
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        c = c.max_age(cookie::time::Duration::seconds(secs));
    }
    c.to_string()
}

/// A Set-Cookie that makes the client forget the cookie `name`.
pub fn expired(name: &str, settings: &CookieSettings) -> String {
    let mut c = Cookie::build((name.to_string(), String::new()))
        .path(settings.path.clone())
        .max_age(cookie::time::Duration::ZERO);
    if let Some(domain) = &settings.domain {
        c = c.domain(domain.clone());
    }
    c.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn finds_our_cookie_among_others() {
        let header = "x=1; tether=a; other=\"q\"; tether=garbage; tether=\"b\"";
        assert_eq!(
            values(header.as_bytes(), "tether"),
            vec!["a", "garbage", "b"]
        );
        assert!(values(header.as_bytes(), "teth").is_empty());
    }

    #[test]
    fn garbage_never_breaks() {
        let mut corpus: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b";;;".to_vec(),
            b"=;=;=".to_vec(),
            b"tether".to_vec(),
            b"\xff\xfe\x00tetherx=\x80".to_vec(),
            vec![b'a'; 8192],
        ];
        let many: String = (0..1000).map(|i| format!("c{i}=v; ")).collect();
        corpus.push(many.into_bytes());
        for header in &corpus {
            assert!(
                values(header, "tether").is_empty(),
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
        // Non-UTF-8 bytes around a good value do not hide it.
        let mixed = b"junk=\xff\xfe; tether=AbC_-1; z=\x80".to_vec();
        assert_eq!(values(&mixed, "tether"), vec!["AbC_-1"]);
    }

    #[test]
    fn candidates_are_bounded() {
        let header: String = (0..50).map(|n| format!("tether=v{n}; ")).collect();
        assert_eq!(values(header.as_bytes(), "tether").len(), MAX_CANDIDATES);
    }

    #[test]
    fn removing_our_cookie_keeps_the_others() {
        assert_eq!(
            without(b"a=1; tether=x; b=2", "tether"),
            Some(b"a=1; b=2".to_vec())
        );
        assert_eq!(without(b"tether=x;tether=y", "tether"), Some(Vec::new()));
        assert_eq!(without(b"a=1; tetherx=2", "tether"), None);
        assert_eq!(
            without(b"a=\xff; tether=x", "tether"),
            Some(b"a=\xff".to_vec())
        );
    }

    #[test]
    fn learning_from_set_cookie() {
        assert_eq!(
            set_cookie_value(b"JSESSIONID=abc123; Path=/; HttpOnly", "JSESSIONID").as_deref(),
            Some("abc123")
        );
        assert_eq!(set_cookie_value(b"OTHER=abc; Path=/", "JSESSIONID"), None);
        assert_eq!(
            set_cookie_value(b"JSESSIONID=; Max-Age=0", "JSESSIONID"),
            None
        );
        assert_eq!(
            set_cookie_value(b"JSESSIONID=x; Max-Age=0", "JSESSIONID"),
            None
        );
        assert_eq!(set_cookie_value(b"\xff", "JSESSIONID"), None);
    }

    #[test]
    fn expiring_a_cookie() {
        let mut s = Settings::default().cookie;
        s.domain = Some("example.com".into());
        let v = expired("tether", &s);
        assert!(
            v.starts_with("tether=;") || v.starts_with("tether=\"\";") || v.starts_with("tether="),
            "{v}"
        );
        assert!(
            v.contains("Max-Age=0") && v.contains("Path=/") && v.contains("Domain=example.com"),
            "{v}"
        );
    }

    #[test]
    fn set_cookie_attributes() {
        let mut s = Settings::default().cookie;
        let v = set_cookie("tether", "tok", &s, Some(60));
        assert!(v.starts_with("tether=tok"), "{v}");
        assert!(v.contains("Path=/"), "{v}");
        assert!(v.contains("HttpOnly"), "{v}");
        assert!(v.contains("SameSite=Lax"), "{v}");
        assert!(!v.contains("Secure"), "{v}");
        assert!(
            !v.contains("Max-Age"),
            "session cookies carry no lifetime: {v}"
        );
        assert!(!v.contains("Domain"), "{v}");

        s.lifetime_type = LifetimeType::Permanent;
        s.secure = true;
        s.http_only = false;
        s.same_site = SameSite::Strict;
        s.domain = Some("example.com".into());
        s.path = "/app".into();
        let v = set_cookie("sid", "tok", &s, Some(86_400));
        for part in [
            "sid=",
            "Path=/app",
            "Secure",
            "SameSite=Strict",
            "Domain=example.com",
            "Max-Age=86400",
        ] {
            assert!(v.contains(part), "{part} missing from {v}");
        }
        assert!(!v.contains("HttpOnly"), "{v}");
    }
}
