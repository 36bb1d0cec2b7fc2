//! Reading tether's cookie from a request and writing the Set-Cookie that issues it.

use crate::config::{CookieSettings, LifetimeType, SameSite};
use crate::token::SessionId;
use cookie::Cookie;

/// At most this many cookies of tether's name are tried per request. A client may send the
/// name several times (two paths, or a stale copy); trying every one would let a request buy
/// unbounded table lookups.
pub const MAX_CANDIDATES: usize = 4;

/// The well-formed session ids among the cookies named `name`, in the order sent. Any bytes
/// at all are accepted: what is not a token of ours is skipped, never an error.
pub fn session_ids(header: &[u8], name: &str) -> Vec<SessionId> {
    // Our tokens are ASCII, so a lossy reading of a non-UTF-8 header loses none of them.
    let text = String::from_utf8_lossy(header);
    Cookie::split_parse(text)
        .filter_map(Result::ok)
        .filter(|c| c.name() == name)
        .filter_map(|c| SessionId::decode(c.value_trimmed().as_bytes()))
        .take(MAX_CANDIDATES)
        .collect()
}

/// The Set-Cookie value that hands `id` to the client. `max_age_s` is used only for
/// permanent cookies.
pub fn set_cookie(
    name: &str,
    id: &SessionId,
    settings: &CookieSettings,
    max_age_s: Option<u64>,
) -> String {
    let mut c = Cookie::build((name.to_string(), id.encode()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn id(n: u8) -> SessionId {
        SessionId([n; 16])
    }

    #[test]
    fn finds_our_cookie_among_others() {
        let a = id(1).encode();
        let b = id(2).encode();
        let header = format!("x=1; tether={a}; other=\"q\"; tether=garbage; tether={b}");
        assert_eq!(session_ids(header.as_bytes(), "tether"), vec![id(1), id(2)]);
        assert_eq!(session_ids(header.as_bytes(), "teth"), vec![]);
        let quoted = format!("tether=\"{a}\"");
        assert_eq!(session_ids(quoted.as_bytes(), "tether"), vec![id(1)]);
    }

    #[test]
    fn garbage_never_breaks() {
        let a = id(3).encode();
        let mut corpus: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b";;;".to_vec(),
            b"=;=;=".to_vec(),
            b"tether".to_vec(),
            b"tether=".to_vec(),
            b"\xff\xfe\x00tether=\x80".to_vec(),
            vec![b'a'; 8192],
            format!("tether={}", "A".repeat(8192)).into_bytes(),
        ];
        let many: String = (0..1000).map(|i| format!("c{i}=v; ")).collect();
        corpus.push(many.into_bytes());
        for header in &corpus {
            assert!(
                session_ids(header, "tether").is_empty(),
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
        // Non-UTF-8 bytes around a good token do not hide it.
        let mixed = [
            b"junk=\xff\xfe; tether=".to_vec(),
            a.clone().into_bytes(),
            b"; z=\x80".to_vec(),
        ]
        .concat();
        assert_eq!(session_ids(&mixed, "tether"), vec![id(3)]);
    }

    #[test]
    fn candidates_are_bounded() {
        let header: String = (0..50)
            .map(|n| format!("tether={}; ", id(n).encode()))
            .collect();
        assert_eq!(
            session_ids(header.as_bytes(), "tether").len(),
            MAX_CANDIDATES
        );
    }

    #[test]
    fn set_cookie_attributes() {
        let mut s = Settings::default().cookie;
        let v = set_cookie("tether", &id(1), &s, Some(60));
        assert!(v.starts_with(&format!("tether={}", id(1).encode())), "{v}");
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
        let v = set_cookie("sid", &id(1), &s, Some(86_400));
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
