//! Cookies: reading them from every field of a request's `Cookie` header, the paths they are
//! sent for, and the `Set-Cookie` headers that issue, learn or clear them.

use crate::config::{CookieSettings, LifetimeType, SameSite};
use cookie::Cookie;

/// At most this many cookies of tether's name are tried per request. A client may send the
/// name several times (two paths, or a stale copy); trying every one would let a request buy
/// unbounded decryptions.
pub const MAX_CANDIDATES: usize = 4;

/// The `name=value` pairs of a `Cookie` header, names and values trimmed, double quotes
/// around a value dropped. Parsed by hand, on bytes: the `cookie` crate's parser carries date
/// parsing for `Expires`, a good share of the module, that a request's `Cookie` header never
/// needs.
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

/// The values of the cookies named `name` in every field of the `Cookie` header, in the order
/// sent, at most `MAX_CANDIDATES`. Any bytes at all are accepted: what does not parse is skipped,
/// never an error.
pub fn values<'a>(fields: impl IntoIterator<Item = &'a [u8]>, name: &str) -> Vec<&'a [u8]> {
    fields
        .into_iter()
        .flat_map(pairs)
        .filter(|(n, _)| *n == name.as_bytes())
        .map(|(_, v)| v)
        .take(MAX_CANDIDATES)
        .collect()
}

/// One pass over every field of the `Cookie` header: the values of `name` (at most
/// `MAX_CANDIDATES`) and, when there was one, the header without it (as `without`).
pub fn take<'a>(fields: &[&'a [u8]], name: &str) -> (Vec<&'a [u8]>, Option<Vec<u8>>) {
    let mut found = Vec::new();
    let mut rest = Vec::new();
    let mut seen = false;
    for field in fields {
        for part in field.split(|&b| b == b';') {
            let part = part.trim_ascii();
            if part.is_empty() {
                continue;
            }
            let (part_name, value) = match part.iter().position(|&b| b == b'=') {
                Some(eq) => (
                    part.get(..eq).unwrap_or(part).trim_ascii(),
                    part.get(eq + 1..).map(<[u8]>::trim_ascii),
                ),
                None => (part, None),
            };
            if part_name == name.as_bytes() {
                seen = true;
                if let Some(v) = value.filter(|_| found.len() < MAX_CANDIDATES) {
                    found.push(
                        v.strip_prefix(b"\"")
                            .and_then(|v| v.strip_suffix(b"\""))
                            .unwrap_or(v),
                    );
                }
            } else {
                if !rest.is_empty() {
                    rest.extend_from_slice(b"; ");
                }
                rest.extend_from_slice(part);
            }
        }
    }
    (found, seen.then_some(rest))
}

/// The `Cookie` header, every field of it, without the cookies named in `names`: `None` if none
/// was there (leave the header alone); else one field with every other cookie, in order (an
/// empty one: remove the header). Several fields become one, as an HTTP/2 hop would join them.
pub fn without<'a>(
    fields: impl IntoIterator<Item = &'a [u8]> + Clone,
    names: &[&str],
) -> Option<Vec<u8>> {
    let is_ours = |part: &[u8]| {
        let name = part
            .split(|&b| b == b'=')
            .next()
            .unwrap_or(part)
            .trim_ascii();
        names.iter().any(|n| n.as_bytes() == name)
    };
    let parts = || {
        fields
            .clone()
            .into_iter()
            .flat_map(|f| f.split(|&b| b == b';'))
            .map(<[u8]>::trim_ascii)
            .filter(|p| !p.is_empty())
    };
    if !parts().any(is_ours) {
        return None;
    }
    let mut out = Vec::new();
    for part in parts().filter(|p| !is_ours(p)) {
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(part);
    }
    Some(out)
}

/// RFC 6265 5.1.4: whether a cookie with `cookie_path` is sent with a request for
/// `request_path`, as a browser decides it.
pub fn path_matches(request_path: &[u8], cookie_path: &str) -> bool {
    let cookie = cookie_path.as_bytes();
    if request_path == cookie {
        return true;
    }
    request_path.starts_with(cookie)
        && (cookie.ends_with(b"/") || request_path.get(cookie.len()) == Some(&b'/'))
}

/// The name a `Set-Cookie` header sets.
pub fn set_cookie_name(header: &[u8]) -> Option<&[u8]> {
    pairs(header).next().map(|(name, _)| name)
}

/// The value a `Set-Cookie` header gives to the cookie `name`, unless it deletes it: an empty
/// value, a `Max-Age` of zero or less, or (without a `Max-Age`) an `Expires` not after `now_ms`.
/// Attributes that do not parse are ignored, as browsers do (RFC 6265 5.2).
pub fn set_cookie_value<'a>(header: &'a [u8], name: &str, now_ms: u64) -> Option<&'a [u8]> {
    let mut parts = pairs(header);
    let (first_name, value) = parts.next()?;
    if first_name != name.as_bytes() || value.is_empty() {
        return None;
    }
    let mut max_age: Option<i64> = None;
    let mut expires_ms: Option<u64> = None;
    for (attr, v) in parts {
        if attr.eq_ignore_ascii_case(b"max-age") {
            if let Some(secs) = delta_seconds(v) {
                max_age = Some(secs);
            }
        } else if attr.eq_ignore_ascii_case(b"expires") {
            if let Some(at) = cookie_date_ms(v) {
                expires_ms = Some(at);
            }
        }
    }
    let deletes = match (max_age, expires_ms) {
        (Some(secs), _) => secs <= 0,
        (None, Some(at)) => at <= now_ms,
        (None, None) => false,
    };
    (!deletes).then_some(value)
}

/// A `Max-Age` value: an optional `-` and one or more digits; anything else is no value.
fn delta_seconds(v: &[u8]) -> Option<i64> {
    let (negative, digits) = match v.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // More digits than an i64 holds is a very long time (or a very past one).
    let n = std::str::from_utf8(digits)
        .ok()?
        .parse::<i64>()
        .unwrap_or(i64::MAX);
    Some(if negative { -n } else { n })
}

/// RFC 6265 5.1.1, the lenient cookie-date algorithm browsers use for `Expires`: milliseconds
/// since 1970 (0 for dates before it), or `None` when it is no date.
pub fn cookie_date_ms(text: &[u8]) -> Option<u64> {
    let delimiter =
        |b: &u8| matches!(*b, 0x09 | 0x20..=0x2f | 0x3b..=0x40 | 0x5b..=0x60 | 0x7b..=0x7e);
    let (mut time, mut day, mut month, mut year) = (None, None, None, None);
    for token in text.split(delimiter).filter(|t| !t.is_empty()) {
        if time.is_none() {
            if let Some(t) = time_of_day(token) {
                time = Some(t);
                continue;
            }
        }
        if day.is_none() {
            if let Some(d) = leading_number(token, 1, 2) {
                day = Some(d);
                continue;
            }
        }
        if month.is_none() {
            if let Some(m) = month_of(token) {
                month = Some(m);
                continue;
            }
        }
        if year.is_none() {
            if let Some(y) = leading_number(token, 2, 4) {
                year = Some(y);
            }
        }
    }
    let (hour, minute, second) = time?;
    let (day, month, mut year) = (day?, month?, year?);
    if (70..=99).contains(&year) {
        year += 1900;
    } else if year <= 69 {
        year += 2000;
    }
    if !(1..=31).contains(&day) || year < 1601 || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(i64::from(year), i64::from(month), i64::from(day));
    let secs = days * 86_400 + i64::from(hour) * 3_600 + i64::from(minute) * 60 + i64::from(second);
    Some(u64::try_from(secs).unwrap_or(0).saturating_mul(1_000))
}

/// `min` to `max` digits at the start of `token`, followed by nothing or a non-digit.
fn leading_number(token: &[u8], min: usize, max: usize) -> Option<u32> {
    let digits = token.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits < min || digits > max {
        return None;
    }
    std::str::from_utf8(token.get(..digits)?).ok()?.parse().ok()
}

/// `h:m:s`, each of one or two digits, followed by nothing or a non-digit.
fn time_of_day(token: &[u8]) -> Option<(u32, u32, u32)> {
    let mut fields = token.splitn(3, |&b| b == b':');
    let exact = |f: &[u8]| {
        (!f.is_empty() && f.len() <= 2 && f.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(f).ok()?.parse().ok())
            .flatten()
    };
    let hour = exact(fields.next()?)?;
    let minute = exact(fields.next()?)?;
    let second = leading_number(fields.next()?, 1, 2)?;
    Some((hour, minute, second))
}

fn month_of(token: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    let prefix = token.get(..3)?;
    MONTHS
        .iter()
        .position(|m| prefix.eq_ignore_ascii_case(m.as_slice()))
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The Set-Cookie value that hands `value` to the client. `max_age_s` is used only for
/// permanent cookies. Every new session and refreshed token writes one, so it is put together
/// here rather than through `cookie::Cookie` (which copies each part and formats them); the
/// attributes and their order are the crate's (`expired` still uses it, and a test holds the
/// two to the same text).
pub fn set_cookie(
    name: &str,
    value: &str,
    settings: &CookieSettings,
    max_age_s: Option<u64>,
) -> String {
    let domain = settings
        .domain
        .as_deref()
        .map(|d| d.strip_prefix('.').unwrap_or(d));
    let mut out = String::with_capacity(
        name.len() + value.len() + settings.path.len() + domain.map_or(0, str::len) + 96,
    );
    out.push_str(name);
    out.push('=');
    out.push_str(value);
    if settings.http_only {
        out.push_str("; HttpOnly");
    }
    out.push_str(match settings.same_site {
        SameSite::Lax => "; SameSite=Lax",
        SameSite::Strict => "; SameSite=Strict",
        SameSite::None => "; SameSite=None",
    });
    if settings.secure {
        out.push_str("; Secure");
    }
    out.push_str("; Path=");
    out.push_str(&settings.path);
    if let Some(domain) = domain {
        out.push_str("; Domain=");
        out.push_str(domain);
    }
    if let (LifetimeType::Permanent, Some(secs)) = (settings.lifetime_type, max_age_s) {
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        out.push_str("; Max-Age=");
        out.push_str(&secs.to_string());
    }
    out
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
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// What `cookie::Cookie` renders for the same settings.
    fn crate_set_cookie(
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
            c = c.max_age(cookie::time::Duration::seconds(
                i64::try_from(secs).unwrap(),
            ));
        }
        c.to_string()
    }

    #[test]
    fn set_cookie_writes_what_the_cookie_crate_writes() {
        let mut n = 0;
        for same_site in [SameSite::Lax, SameSite::Strict, SameSite::None] {
            for (secure, http_only) in [(false, false), (false, true), (true, false), (true, true)]
            {
                for domain in [None, Some("example.com"), Some(".example.com")] {
                    for lifetime_type in [LifetimeType::Session, LifetimeType::Permanent] {
                        for max_age in [None, Some(0), Some(86_400)] {
                            let s = CookieSettings {
                                path: "/app".to_string(),
                                domain: domain.map(str::to_string),
                                secure,
                                http_only,
                                same_site,
                                lifetime_type,
                            };
                            assert_eq!(
                                set_cookie("tether", "tok", &s, max_age),
                                crate_set_cookie("tether", "tok", &s, max_age),
                                "{s:?}"
                            );
                            n += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(n, 3 * 4 * 3 * 2 * 3);
    }

    fn one(header: &str) -> Vec<&[u8]> {
        vec![header.as_bytes()]
    }

    #[test]
    fn finds_our_cookie_among_others() {
        let header = "x=1; tether=a; other=\"q\"; tether=garbage; tether=\"b\"";
        assert_eq!(
            values(one(header), "tether"),
            vec![&b"a"[..], b"garbage", b"b"]
        );
        assert!(values(one(header), "teth").is_empty());
    }

    /// Issue #12, defect 4: the second `Cookie` field was never read.
    #[test]
    fn every_cookie_field_is_read() {
        let fields: Vec<&[u8]> = vec![b"a=1", b"tether=T; b=2", b"c=3"];
        assert_eq!(values(fields.clone(), "tether"), vec![&b"T"[..]]);
        assert_eq!(
            without(fields.clone(), &["tether"]),
            Some(b"a=1; b=2; c=3".to_vec()),
            "every other cookie of every field passes on"
        );
        let first: Vec<&[u8]> = vec![b"tether=T", b"a=1"];
        assert_eq!(without(first, &["tether"]), Some(b"a=1".to_vec()));
        let none_ours: Vec<&[u8]> = vec![b"a=1", b"b=2"];
        assert_eq!(without(none_ours, &["tether"]), None, "left alone");
    }

    #[test]
    fn one_pass_takes_what_values_and_without_give() {
        let cases: Vec<Vec<&[u8]>> = vec![
            vec![b"a=1; tether=T; b=2"],
            vec![b"a=1", b"tether=T; b=2", b"c=3"],
            vec![b"tether=\"Q\"", b"tether=x; tether=y; tether=z; tether=w"],
            vec![b"a=1; tether"],
            vec![b"a=1; b=2"],
            vec![b";;; =x; tether=; a"],
            vec![b"\xff=\xfe; tether=\x80"],
        ];
        for fields in cases {
            let (found, rest) = take(&fields, "tether");
            assert_eq!(
                found,
                values(fields.iter().copied(), "tether"),
                "{fields:?}"
            );
            assert_eq!(
                rest,
                without(fields.iter().copied(), &["tether"]),
                "{fields:?}"
            );
        }
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
                values([header.as_slice()], "tether").is_empty(),
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
        // Non-UTF-8 bytes around a good value do not hide it.
        let mixed = b"junk=\xff\xfe; tether=AbC_-1; z=\x80".to_vec();
        assert_eq!(values([mixed.as_slice()], "tether"), vec![&b"AbC_-1"[..]]);
    }

    #[test]
    fn candidates_are_bounded() {
        let header: String = (0..50).map(|n| format!("tether=v{n}; ")).collect();
        assert_eq!(values(one(&header), "tether").len(), MAX_CANDIDATES);
    }

    #[test]
    fn removing_our_cookies_keeps_the_others() {
        assert_eq!(
            without(one("a=1; tether=x; b=2"), &["tether"]),
            Some(b"a=1; b=2".to_vec())
        );
        assert_eq!(
            without(one("tether=x;tether=y"), &["tether"]),
            Some(Vec::new())
        );
        assert_eq!(without(one("a=1; tetherx=2"), &["tether"]), None);
        assert_eq!(
            without([&b"a=\xff; tether=x"[..]], &["tether"]),
            Some(b"a=\xff".to_vec())
        );
        assert_eq!(
            without(one("a=1; tether-J=x; J=2"), &["tether", "tether-J"]),
            Some(b"a=1; J=2".to_vec())
        );
    }

    #[test]
    fn paths_match_as_browsers_match_them() {
        for (request, cookie, matches) in [
            ("/", "/", true),
            ("/app", "/", true),
            ("/app", "/app", true),
            ("/app/", "/app", true),
            ("/app/x", "/app", true),
            ("/app/x", "/app/", true),
            ("/apple", "/app", false),
            ("/other", "/app", false),
            ("/favicon.ico", "/app", false),
            ("/", "/app", false),
            ("/ap", "/app", false),
        ] {
            assert_eq!(
                path_matches(request.as_bytes(), cookie),
                matches,
                "{request} for Path={cookie}"
            );
        }
    }

    #[test]
    fn learning_from_set_cookie() {
        fn learn(h: &str) -> Option<&[u8]> {
            set_cookie_value(h.as_bytes(), "JSESSIONID", NOW)
        }
        assert_eq!(
            learn("JSESSIONID=abc123; Path=/; HttpOnly"),
            Some(&b"abc123"[..])
        );
        assert_eq!(learn("OTHER=abc; Path=/"), None);
        assert_eq!(learn("JSESSIONID=; Max-Age=0"), None);
        assert_eq!(learn("JSESSIONID=x; Max-Age=0"), None);
        assert_eq!(learn("JSESSIONID=x; Max-Age=-5"), None);
        assert_eq!(learn("JSESSIONID=x; Max-Age=60"), Some(&b"x"[..]));
        assert_eq!(set_cookie_value(b"\xff", "JSESSIONID", NOW), None);
        assert_eq!(
            set_cookie_name(b"JSESSIONID=x; Path=/"),
            Some(&b"JSESSIONID"[..])
        );
    }

    const NOW: u64 = 1_780_000_000_000; // 2026-05-28

    /// Issue #12, defect 9: an empty `Max-Age=` was taken as a deletion, and a past `Expires`
    /// (with no `Max-Age`) was learned as an id.
    #[test]
    fn max_age_and_expires_as_browsers_read_them() {
        let learn = |h: &str| set_cookie_value(h.as_bytes(), "SID", NOW).is_some();
        assert!(learn("SID=x; Max-Age="), "an empty Max-Age is no attribute");
        assert!(learn("SID=x; Max-Age=abc"), "nor is one that is no number");
        assert!(learn("SID=x; Max-Age=1x"));
        assert!(
            !learn("SID=x; Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
            "a past Expires deletes"
        );
        assert!(!learn("SID=x; expires=Wed, 21-Oct-2015 07:28:00 GMT"));
        assert!(learn("SID=x; Expires=Wed, 21 Oct 2099 07:28:00 GMT"));
        assert!(
            learn("SID=x; Expires=not a date"),
            "an Expires that is no date is ignored"
        );
        assert!(
            learn("SID=x; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=60"),
            "Max-Age wins over Expires"
        );
        assert!(
            !learn("SID=x; Max-Age=60; Max-Age=0"),
            "the last Max-Age counts"
        );
    }

    #[test]
    fn cookie_dates() {
        let ms = |t: &str| cookie_date_ms(t.as_bytes());
        assert_eq!(ms("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(ms("Wed, 21 Oct 2015 07:28:00 GMT"), Some(1_445_412_480_000));
        assert_eq!(
            ms("Wednesday, 21-Oct-15 07:28:00 GMT"),
            Some(1_445_412_480_000)
        );
        assert_eq!(
            ms("Wed Oct 21 07:28:00 2015"),
            Some(1_445_412_480_000),
            "asctime"
        );
        assert_eq!(ms("29 Feb 2000 23:59:59"), Some(951_868_799_000));
        assert_eq!(ms("Sat, 01 Jan 1600 00:00:00 GMT"), None, "before 1601");
        assert_eq!(ms("Wed, 32 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(ms("Wed, 21 Oct 2015 24:00:00 GMT"), None);
        assert_eq!(ms("Wed, 21 Foo 2015 07:28:00 GMT"), None);
        assert_eq!(ms("Wed, 21 Oct 2015"), None, "no time");
        assert_eq!(
            ms("Fri, 01 Jan 1960 00:00:00 GMT"),
            Some(0),
            "before 1970 is the past"
        );
        assert_eq!(ms(""), None);
        assert_eq!(ms("\u{0}\u{0}"), None);
    }

    #[test]
    fn expiring_a_cookie() {
        let s = CookieSettings {
            domain: Some("example.com".into()),
            ..CookieSettings::default()
        };
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
        let mut s = CookieSettings::default();
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
