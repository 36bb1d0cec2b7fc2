//! Plugin configuration: the JSON a user writes, checked field by field and compiled into
//! [`Settings`], the form the request path uses.
//!
//! The JSON is walked by hand (over `serde_json::Value`) rather than derived, so that every
//! refusal names the field at fault (`cookie.same_site: ...`), which is what a person reading
//! Envoy's log needs, and what serde's type errors do not give.

use serde_json::{Map, Value};
use std::fmt;

/// Defaults, named once; the README's config reference lists the same values.
pub const DEFAULT_SESSION_NAME: &str = "tether";
pub const DEFAULT_HOST_HEADER: &str = "x-tether-host";
pub const DEFAULT_COOKIE_PATH: &str = "/";

/// A refused configuration: the field (dotted path) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.field, self.problem)
        }
    }
}

fn err(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Cookie,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeType {
    /// A browser-session cookie: no Expires, no Max-Age.
    Session,
    /// `Max-Age` set to what is left of `absolute_timeout`.
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSettings {
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    pub lifetime_type: LifetimeType,
}

/// The compiled configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub session_type: SessionType,
    pub session_name: String,
    pub cookie: CookieSettings,
    /// Milliseconds; `None` means no limit.
    pub absolute_timeout_ms: Option<u64>,
    /// Milliseconds; `None` means no limit.
    pub idle_timeout_ms: Option<u64>,
    /// Lower-case header name that Envoy's `override_host` policy reads.
    pub host_header: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            session_type: SessionType::Cookie,
            session_name: DEFAULT_SESSION_NAME.to_string(),
            cookie: CookieSettings {
                path: DEFAULT_COOKIE_PATH.to_string(),
                domain: None,
                secure: false,
                http_only: true,
                same_site: SameSite::Lax,
                lifetime_type: LifetimeType::Session,
            },
            absolute_timeout_ms: None,
            idle_timeout_ms: None,
            host_header: DEFAULT_HOST_HEADER.to_string(),
        }
    }
}

impl Settings {
    /// Parses and checks the plugin configuration. Empty input (no configuration) means
    /// every default.
    pub fn parse(bytes: &[u8]) -> Result<Settings, ConfigError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Settings::default());
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| err("", format!("configuration is not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| err("", "configuration must be a JSON object"))?;
        Settings::from_object(obj)
    }

    fn from_object(obj: &Map<String, Value>) -> Result<Settings, ConfigError> {
        let mut fields = Fields::new(obj, "");
        let mut s = Settings::default();

        if let Some(kind) = fields.string("type")? {
            s.session_type = match kind {
                "cookie" => SessionType::Cookie,
                other => {
                    return Err(err(
                        "type",
                        format!("unknown session type {other:?}; expected \"cookie\""),
                    ))
                }
            };
        }
        if let Some(name) = fields.string("session_name")? {
            check_token("session_name", name)?;
            s.session_name = name.to_string();
        }
        if let Some(cookie) = fields.object("cookie")? {
            let mut c = Fields::new(cookie, "cookie");
            if let Some(path) = c.string("path")? {
                check_cookie_path("cookie.path", path)?;
                s.cookie.path = path.to_string();
            }
            if let Some(domain) = c.string("domain")? {
                check_cookie_domain("cookie.domain", domain)?;
                s.cookie.domain = Some(domain.to_string());
            }
            if let Some(secure) = c.boolean("secure")? {
                s.cookie.secure = secure;
            }
            if let Some(http_only) = c.boolean("http_only")? {
                s.cookie.http_only = http_only;
            }
            if let Some(same_site) = c.string("same_site")? {
                s.cookie.same_site = match same_site {
                    "lax" => SameSite::Lax,
                    "strict" => SameSite::Strict,
                    "none" => SameSite::None,
                    other => {
                        return Err(err(
                            "cookie.same_site",
                            format!(
                                "unknown value {other:?}; expected \"lax\", \"strict\" or \"none\""
                            ),
                        ))
                    }
                };
            }
            if let Some(lifetime) = c.string("lifetime_type")? {
                s.cookie.lifetime_type = match lifetime {
                    "session" => LifetimeType::Session,
                    "permanent" => LifetimeType::Permanent,
                    other => {
                        return Err(err(
                            "cookie.lifetime_type",
                            format!(
                                "unknown value {other:?}; expected \"session\" or \"permanent\""
                            ),
                        ))
                    }
                };
            }
            c.finish()?;
        }
        if let Some(d) = fields.string("absolute_timeout")? {
            s.absolute_timeout_ms = Some(parse_duration_ms("absolute_timeout", d)?);
        }
        if let Some(d) = fields.string("idle_timeout")? {
            s.idle_timeout_ms = Some(parse_duration_ms("idle_timeout", d)?);
        }
        if let Some(upstream) = fields.object("upstream")? {
            let mut u = Fields::new(upstream, "upstream");
            if let Some(h) = u.string("host_header")? {
                check_token("upstream.host_header", h)?;
                s.host_header = h.to_ascii_lowercase();
            }
            u.finish()?;
        }
        fields.finish()?;

        if s.cookie.lifetime_type == LifetimeType::Permanent && s.absolute_timeout_ms.is_none() {
            return Err(err(
                "cookie.lifetime_type",
                "\"permanent\" needs absolute_timeout (the cookie's Max-Age)",
            ));
        }
        if s.cookie.same_site == SameSite::None && !s.cookie.secure {
            return Err(err(
                "cookie.same_site",
                "\"none\" needs cookie.secure: true (browsers drop SameSite=None cookies without Secure)",
            ));
        }
        if ["cookie", "host", "content-length", "transfer-encoding"]
            .contains(&s.host_header.as_str())
        {
            return Err(err(
                "upstream.host_header",
                format!("{:?} is a header Envoy needs for itself", s.host_header),
            ));
        }
        Ok(s)
    }
}

/// Reads the fields of one JSON object, remembering which were read so that `finish` can
/// refuse the rest as unknown. `null` counts as absent (the default applies).
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'static str,
    seen: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(obj: &'a Map<String, Value>, prefix: &'static str) -> Self {
        Fields {
            obj,
            prefix,
            seen: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    fn get(&mut self, name: &'static str) -> Option<&'a Value> {
        self.seen.push(name);
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn string(&mut self, name: &'static str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(err(
                &self.path(name),
                format!("expected a string, got {other}"),
            )),
        }
    }

    fn boolean(&mut self, name: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(err(
                &self.path(name),
                format!("expected true or false, got {other}"),
            )),
        }
    }

    fn object(
        &mut self,
        name: &'static str,
    ) -> Result<Option<&'a Map<String, Value>>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(other) => Err(err(
                &self.path(name),
                format!("expected an object, got {other}"),
            )),
        }
    }

    fn finish(self) -> Result<(), ConfigError> {
        match self.obj.keys().find(|k| !self.seen.contains(&k.as_str())) {
            Some(unknown) => Err(err(
                &self.path(unknown),
                format!("unknown field; expected one of: {}", self.seen.join(", ")),
            )),
            None => Ok(()),
        }
    }
}

/// RFC 7230 `token`: what both a cookie name and a header name may be made of.
fn check_token(field: &str, value: &str) -> Result<(), ConfigError> {
    const SEPARATORS: &[u8] = b"!#$%&'*+-.^_`|~";
    if value.is_empty() {
        return Err(err(field, "must not be empty"));
    }
    if value.len() > 128 {
        return Err(err(field, "must be at most 128 characters"));
    }
    if let Some(bad) = value
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || SEPARATORS.contains(b)))
    {
        return Err(err(
            field,
            format!(
                "{value:?} has the character {:?}, not allowed in a name",
                char::from(bad)
            ),
        ));
    }
    Ok(())
}

fn check_attribute_text(field: &str, value: &str) -> Result<(), ConfigError> {
    if let Some(bad) = value
        .chars()
        .find(|c| *c == ';' || c.is_control() || c.is_whitespace() || !c.is_ascii())
    {
        return Err(err(field, format!("{value:?} has the character {bad:?}")));
    }
    Ok(())
}

fn check_cookie_path(field: &str, path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/') {
        return Err(err(field, format!("{path:?} must start with '/'")));
    }
    check_attribute_text(field, path)
}

fn check_cookie_domain(field: &str, domain: &str) -> Result<(), ConfigError> {
    if domain.is_empty() {
        return Err(err(
            field,
            "must not be empty (use null for a host-only cookie)",
        ));
    }
    check_attribute_text(field, domain)
}

/// Parses a Gateway API duration (`1h`, `30m`, `10s`, `500ms`, `1h30m`): one to four parts,
/// each of one to five digits and a unit. Zero is refused: a timeout of nothing is a mistake.
pub fn parse_duration_ms(field: &str, text: &str) -> Result<u64, ConfigError> {
    let bad = || {
        err(
            field,
            format!(
                "{text:?} is not a duration like \"1h\", \"30m\", \"10s\", \"500ms\" or \"1h30m\""
            ),
        )
    };
    let bytes = text.as_bytes();
    let mut total: u64 = 0;
    let mut parts = 0;
    let mut i = 0;
    while i < bytes.len() {
        let digits_start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = i - digits_start;
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let number: u64 = text
            .get(digits_start..i)
            .and_then(|d| d.parse().ok())
            .ok_or_else(bad)?;
        let unit_ms = match (bytes.get(i), bytes.get(i + 1)) {
            (Some(b'm'), Some(b's')) => {
                i += 2;
                1
            }
            (Some(b'h'), _) => {
                i += 1;
                3_600_000
            }
            (Some(b'm'), _) => {
                i += 1;
                60_000
            }
            (Some(b's'), _) => {
                i += 1;
                1_000
            }
            _ => return Err(bad()),
        };
        total += number * unit_ms;
        parts += 1;
        if parts > 4 {
            return Err(bad());
        }
    }
    if parts == 0 {
        return Err(bad());
    }
    if total == 0 {
        return Err(err(
            field,
            format!("{text:?} is zero; leave the field out for no limit"),
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, ConfigError> {
        Settings::parse(json.as_bytes())
    }

    #[test]
    fn empty_and_empty_object_give_defaults() {
        assert_eq!(parse("").unwrap(), Settings::default());
        assert_eq!(parse("  \n").unwrap(), Settings::default());
        assert_eq!(parse("{}").unwrap(), Settings::default());
        let d = Settings::default();
        assert_eq!(d.session_name, "tether");
        assert_eq!(d.host_header, "x-tether-host");
        assert_eq!(d.cookie.path, "/");
        assert!(d.cookie.http_only);
        assert!(!d.cookie.secure);
        assert_eq!(d.cookie.same_site, SameSite::Lax);
        assert_eq!(d.cookie.lifetime_type, LifetimeType::Session);
        assert_eq!(d.absolute_timeout_ms, None);
        assert_eq!(d.idle_timeout_ms, None);
    }

    #[test]
    fn full_example_from_the_readme() {
        let s = parse(
            r#"{"type": "cookie", "session_name": "sid",
                "cookie": {"path": "/app", "domain": "example.com", "secure": true, "http_only": false,
                           "same_site": "strict", "lifetime_type": "permanent"},
                "absolute_timeout": "24h", "idle_timeout": "30m",
                "upstream": {"host_header": "X-Pin"}}"#,
        )
        .unwrap();
        assert_eq!(s.session_name, "sid");
        assert_eq!(s.cookie.path, "/app");
        assert_eq!(s.cookie.domain.as_deref(), Some("example.com"));
        assert!(s.cookie.secure);
        assert!(!s.cookie.http_only);
        assert_eq!(s.cookie.same_site, SameSite::Strict);
        assert_eq!(s.cookie.lifetime_type, LifetimeType::Permanent);
        assert_eq!(s.absolute_timeout_ms, Some(86_400_000));
        assert_eq!(s.idle_timeout_ms, Some(1_800_000));
        assert_eq!(s.host_header, "x-pin");
    }

    #[test]
    fn nulls_mean_defaults() {
        let s =
            parse(r#"{"session_name": null, "cookie": {"domain": null}, "idle_timeout": null}"#)
                .unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn durations() {
        let ok = [
            ("1h", 3_600_000),
            ("30m", 1_800_000),
            ("10s", 10_000),
            ("500ms", 500),
            ("1h30m", 5_400_000),
            ("1h30m10s500ms", 5_410_500),
            ("99999s", 99_999_000),
        ];
        for (text, ms) in ok {
            assert_eq!(parse_duration_ms("d", text), Ok(ms), "{text}");
        }
        for text in [
            "",
            "0s",
            "0ms",
            "-1s",
            "1d",
            "10 minutes",
            "1.5h",
            "s",
            "1",
            "123456s",
            "1h1h1h1h1h",
            " 1s",
            "1s ",
            "1S",
            "1µs",
        ] {
            assert!(parse_duration_ms("d", text).is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            ("not json", ""),
            ("[1]", ""),
            (r#"{"bogus": 1}"#, "bogus"),
            (r#"{"type": "bogus"}"#, "type"),
            (r#"{"type": 1}"#, "type"),
            (r#"{"session_name": ""}"#, "session_name"),
            (r#"{"session_name": "a b"}"#, "session_name"),
            (r#"{"session_name": "a;b"}"#, "session_name"),
            (r#"{"cookie": {"colour": "red"}}"#, "cookie.colour"),
            (r#"{"cookie": "yes"}"#, "cookie"),
            (r#"{"cookie": {"path": "app"}}"#, "cookie.path"),
            (r#"{"cookie": {"path": "/a;b"}}"#, "cookie.path"),
            (r#"{"cookie": {"domain": ""}}"#, "cookie.domain"),
            (r#"{"cookie": {"secure": "yes"}}"#, "cookie.secure"),
            (r#"{"cookie": {"same_site": "bogus"}}"#, "cookie.same_site"),
            (r#"{"cookie": {"same_site": "none"}}"#, "cookie.same_site"),
            (
                r#"{"cookie": {"lifetime_type": "forever"}}"#,
                "cookie.lifetime_type",
            ),
            (
                r#"{"cookie": {"lifetime_type": "permanent"}}"#,
                "cookie.lifetime_type",
            ),
            (r#"{"absolute_timeout": "1d"}"#, "absolute_timeout"),
            (r#"{"idle_timeout": "10 minutes"}"#, "idle_timeout"),
            (r#"{"idle_timeout": 30}"#, "idle_timeout"),
            (
                r#"{"upstream": {"host_header": ""}}"#,
                "upstream.host_header",
            ),
            (
                r#"{"upstream": {"host_header": "cookie"}}"#,
                "upstream.host_header",
            ),
            (r#"{"upstream": {"cluster": "x"}}"#, "upstream.cluster"),
        ];
        for (json, field) in cases {
            let e = parse(json).expect_err(json);
            assert_eq!(e.field, field, "{json}: {e}");
            assert!(e.to_string().starts_with(field), "{e}");
        }
    }

    #[test]
    fn same_site_none_with_secure_and_permanent_with_absolute_are_fine() {
        let s = parse(r#"{"cookie": {"same_site": "none", "secure": true, "lifetime_type": "permanent"}, "absolute_timeout": "1h"}"#).unwrap();
        assert_eq!(s.cookie.same_site, SameSite::None);
        assert_eq!(s.cookie.lifetime_type, LifetimeType::Permanent);
    }
}
