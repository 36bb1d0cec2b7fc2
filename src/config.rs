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
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
pub const DEFAULT_UNAVAILABLE_STATUS: u16 = 503;
pub const DEFAULT_RETRY_AFTER_S: u64 = 5;
/// Bytes of a token key.
pub const KEY_LEN: usize = 32;
/// Bounds that keep a typo from becoming an outage or an allocation storm.
pub const MAX_MAX_SESSIONS: usize = 10_000_000;
pub const MIN_MAX_SESSIONS: usize = 8;
pub const MAX_TRUSTED_HOPS: usize = 16;
pub const MAX_KEYS: usize = 8;

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
    /// tether issues a sealed token in a cookie named `session_name`.
    Cookie,
    /// tether issues a sealed token in a response header named `session_name`; the client
    /// sends it back in a request header of that name.
    Header,
    /// tether binds an id the application or the client already has (`learn_from`).
    Learn,
    /// The client's address pins the session.
    SourceIp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnFrom {
    /// The backend sets a cookie named `session_name` (e.g. JSESSIONID).
    Cookie,
    /// The client sends a request header named `session_name`.
    Header,
    /// The client sends a query parameter named `session_name`.
    Query,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// The session moves to the endpoint that served it.
    Rebalance,
    /// The session stays; the client gets `unavailable_status` with `Retry-After`.
    Strict,
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
    /// Lower-case header name a route matches to pick the session's cluster.
    pub cluster_header: Option<String>,
    pub learn_from: LearnFrom,
    /// `X-Forwarded-For` entries added by trusted proxies (source_ip); 0: the peer address.
    pub trusted_hops: usize,
    /// Token keys: the first seals, all open. Empty: a random key per Envoy process.
    pub keys: Vec<[u8; KEY_LEN]>,
    pub on_unavailable: OnUnavailable,
    pub unavailable_status: u16,
    pub retry_after_s: u64,
    /// Bindings the table holds at most (learn and source_ip).
    pub max_sessions: usize,
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
            cluster_header: None,
            learn_from: LearnFrom::Cookie,
            trusted_hops: 0,
            keys: Vec::new(),
            on_unavailable: OnUnavailable::Rebalance,
            unavailable_status: DEFAULT_UNAVAILABLE_STATUS,
            retry_after_s: DEFAULT_RETRY_AFTER_S,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

/// The whole plugin configuration: the top-level policy, and per-route policies keyed by
/// Envoy route name (`None`: tether is disabled on that route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    pub default: Settings,
    pub routes: Vec<(String, Option<Settings>)>,
}

impl PluginConfig {
    /// Parses and checks the plugin configuration. Empty input (no configuration) means
    /// every default.
    pub fn parse(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(PluginConfig {
                default: Settings::default(),
                routes: Vec::new(),
            });
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| err("", format!("configuration is not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| err("", "configuration must be a JSON object"))?;
        let mut base = obj.clone();
        let routes = match base.remove("routes") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(r)) => r,
            Some(other) => return Err(err("routes", format!("expected an object, got {other}"))),
        };
        let default = Settings::from_object(&base, "")?;
        let mut compiled = Vec::with_capacity(routes.len());
        for (name, route) in &routes {
            let prefix = format!("routes.{name}");
            if name.is_empty() {
                return Err(err("routes", "a route name must not be empty"));
            }
            let Value::Object(route) = route else {
                return Err(err(&prefix, format!("expected an object, got {route}")));
            };
            let mut route = route.clone();
            let disabled = match route.remove("disabled") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(other) => {
                    return Err(err(
                        &format!("{prefix}.disabled"),
                        format!("expected true or false, got {other}"),
                    ))
                }
            };
            if route.contains_key("routes") {
                return Err(err(&format!("{prefix}.routes"), "routes do not nest"));
            }
            // A route's fields override the top level's; objects merge field by field.
            let mut merged = base.clone();
            merge(&mut merged, &route);
            let settings = Settings::from_object(&merged, &format!("{prefix}."))?;
            compiled.push((name.clone(), (!disabled).then_some(settings)));
        }
        Ok(PluginConfig {
            default,
            routes: compiled,
        })
    }
}

fn merge(base: &mut Map<String, Value>, over: &Map<String, Value>) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(Value::Object(b)), Value::Object(o)) => merge(b, o),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

impl Settings {
    /// One policy, without routes (tests and tools).
    pub fn parse(bytes: &[u8]) -> Result<Settings, ConfigError> {
        let config = PluginConfig::parse(bytes)?;
        if !config.routes.is_empty() {
            return Err(err("routes", "not allowed here"));
        }
        Ok(config.default)
    }

    fn from_object(obj: &Map<String, Value>, prefix: &str) -> Result<Settings, ConfigError> {
        let mut fields = Fields::new(obj, prefix.trim_end_matches('.'));
        let mut s = Settings::default();
        let at = |field: &str| format!("{prefix}{field}");

        if let Some(kind) = fields.string("type")? {
            s.session_type = match kind {
                "cookie" => SessionType::Cookie,
                "header" => SessionType::Header,
                "learn" => SessionType::Learn,
                "source_ip" => SessionType::SourceIp,
                other => {
                    return Err(err(
                        &at("type"),
                        format!("unknown session type {other:?}; expected \"cookie\", \"header\", \"learn\" or \"source_ip\""),
                    ))
                }
            };
        }
        if let Some(name) = fields.string("session_name")? {
            check_token(&at("session_name"), name)?;
            s.session_name = name.to_string();
        }
        if let Some(from) = fields.string("learn_from")? {
            s.learn_from = match from {
                "cookie" => LearnFrom::Cookie,
                "header" => LearnFrom::Header,
                "query" => LearnFrom::Query,
                other => {
                    return Err(err(
                        &at("learn_from"),
                        format!(
                            "unknown value {other:?}; expected \"cookie\", \"header\" or \"query\""
                        ),
                    ))
                }
            };
        }
        if let Some(hops) = fields.integer("trusted_hops", 0, MAX_TRUSTED_HOPS as u64)? {
            s.trusted_hops = hops as usize;
        }
        if let Some(keys) = fields.array("keys")? {
            if keys.is_empty() || keys.len() > MAX_KEYS {
                return Err(err(
                    &at("keys"),
                    format!("must list 1 to {MAX_KEYS} keys (leave the field out for a random key per Envoy process)"),
                ));
            }
            for (i, key) in keys.iter().enumerate() {
                let field = at(&format!("keys[{i}]"));
                let text = key
                    .as_str()
                    .ok_or_else(|| err(&field, format!("expected a string, got {key}")))?;
                let bytes = crate::token::base64_decode(text.as_bytes())
                    .ok_or_else(|| err(&field, "is not base64"))?;
                let key: [u8; KEY_LEN] = bytes.try_into().map_err(|b: Vec<u8>| {
                    err(
                        &field,
                        format!(
                            "decodes to {} bytes; a key is {KEY_LEN} random bytes",
                            b.len()
                        ),
                    )
                })?;
                s.keys.push(key);
            }
        }
        if let Some(mode) = fields.string("on_unavailable")? {
            s.on_unavailable = match mode {
                "rebalance" => OnUnavailable::Rebalance,
                "strict" => OnUnavailable::Strict,
                other => {
                    return Err(err(
                        &at("on_unavailable"),
                        format!("unknown value {other:?}; expected \"rebalance\" or \"strict\""),
                    ))
                }
            };
        }
        if let Some(status) = fields.integer("unavailable_status", 200, 599)? {
            s.unavailable_status = status as u16;
        }
        if let Some(d) = fields.string("retry_after")? {
            s.retry_after_s = parse_duration_ms(&at("retry_after"), d)?.div_ceil(1000);
        }
        if let Some(n) = fields.integer(
            "max_sessions",
            MIN_MAX_SESSIONS as u64,
            MAX_MAX_SESSIONS as u64,
        )? {
            s.max_sessions = n as usize;
        }
        if let Some(cookie) = fields.object("cookie")? {
            let mut c = Fields::new(cookie, &at("cookie"));
            if let Some(path) = c.string("path")? {
                check_cookie_path(&at("cookie.path"), path)?;
                s.cookie.path = path.to_string();
            }
            if let Some(domain) = c.string("domain")? {
                check_cookie_domain(&at("cookie.domain"), domain)?;
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
                            &at("cookie.same_site"),
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
                            &at("cookie.lifetime_type"),
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
            s.absolute_timeout_ms = Some(parse_duration_ms(&at("absolute_timeout"), d)?);
        }
        if let Some(d) = fields.string("idle_timeout")? {
            s.idle_timeout_ms = Some(parse_duration_ms(&at("idle_timeout"), d)?);
        }
        if let Some(upstream) = fields.object("upstream")? {
            let mut u = Fields::new(upstream, &at("upstream"));
            if let Some(h) = u.string("host_header")? {
                check_token(&at("upstream.host_header"), h)?;
                s.host_header = h.to_ascii_lowercase();
            }
            if let Some(h) = u.string("cluster_header")? {
                check_token(&at("upstream.cluster_header"), h)?;
                s.cluster_header = Some(h.to_ascii_lowercase());
            }
            u.finish()?;
        }
        fields.finish()?;

        if s.cookie.lifetime_type == LifetimeType::Permanent && s.absolute_timeout_ms.is_none() {
            return Err(err(
                &at("cookie.lifetime_type"),
                "\"permanent\" needs absolute_timeout (the cookie's Max-Age)",
            ));
        }
        if s.cookie.same_site == SameSite::None && !s.cookie.secure {
            return Err(err(
                &at("cookie.same_site"),
                "\"none\" needs cookie.secure: true (browsers drop SameSite=None cookies without Secure)",
            ));
        }
        for (field, header) in [
            ("upstream.host_header", Some(&s.host_header)),
            ("upstream.cluster_header", s.cluster_header.as_ref()),
        ] {
            if let Some(h) = header {
                if RESERVED_HEADERS.contains(&h.as_str()) {
                    return Err(err(
                        &at(field),
                        format!("{h:?} is a header Envoy needs for itself"),
                    ));
                }
            }
        }
        if s.cluster_header.as_ref() == Some(&s.host_header) {
            return Err(err(
                &at("upstream.cluster_header"),
                "must differ from upstream.host_header",
            ));
        }
        let carries_in_header = matches!(s.session_type, SessionType::Header)
            || (s.session_type == SessionType::Learn && s.learn_from == LearnFrom::Header);
        if carries_in_header {
            let name = s.session_name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&name.as_str())
                || name == s.host_header
                || Some(&name) == s.cluster_header.as_ref()
            {
                return Err(err(
                    &at("session_name"),
                    format!("{name:?} cannot carry sessions as a header"),
                ));
            }
        }
        Ok(s)
    }

    /// The request header that carries the session, for the types that use one.
    pub fn session_header(&self) -> Option<String> {
        match (self.session_type, self.learn_from) {
            (SessionType::Header, _) | (SessionType::Learn, LearnFrom::Header) => {
                Some(self.session_name.to_ascii_lowercase())
            }
            _ => None,
        }
    }
}

const RESERVED_HEADERS: &[&str] = &[
    "cookie",
    "set-cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "x-forwarded-for",
];

/// Reads the fields of one JSON object, remembering which were read so that `finish` can
/// refuse the rest as unknown. `null` counts as absent (the default applies).
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: String,
    seen: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(obj: &'a Map<String, Value>, prefix: &str) -> Self {
        Fields {
            obj,
            prefix: prefix.to_string(),
            seen: Vec::new(),
        }
    }

    fn integer(
        &mut self,
        name: &'static str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(err(
                    &self.path(name),
                    format!("expected a whole number from {min} to {max}, got {v}"),
                )),
            },
        }
    }

    fn array(&mut self, name: &'static str) -> Result<Option<&'a Vec<Value>>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(err(
                &self.path(name),
                format!("expected a list, got {other}"),
            )),
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
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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

    const KEY32: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn issue_three_fields() {
        let s = parse(&format!(
            r#"{{"type": "learn", "learn_from": "query", "trusted_hops": 2, "keys": ["{KEY32}"],
                "on_unavailable": "strict", "unavailable_status": 429, "retry_after": "1500ms",
                "max_sessions": 1000, "upstream": {{"cluster_header": "X-Tether-Cluster"}}}}"#
        ))
        .unwrap();
        assert_eq!(s.session_type, SessionType::Learn);
        assert_eq!(s.learn_from, LearnFrom::Query);
        assert_eq!(s.trusted_hops, 2);
        assert_eq!(s.keys.len(), 1);
        assert_eq!(s.keys[0][31], 31);
        assert_eq!(s.on_unavailable, OnUnavailable::Strict);
        assert_eq!(s.unavailable_status, 429);
        assert_eq!(
            s.retry_after_s, 2,
            "Retry-After is whole seconds, rounded up"
        );
        assert_eq!(s.max_sessions, 1000);
        assert_eq!(s.cluster_header.as_deref(), Some("x-tether-cluster"));
        let d = Settings::default();
        assert_eq!(
            (d.on_unavailable, d.unavailable_status, d.retry_after_s),
            (OnUnavailable::Rebalance, 503, 5)
        );
        assert_eq!(d.max_sessions, 100_000);
        assert_eq!(d.learn_from, LearnFrom::Cookie);
        assert!(d.keys.is_empty());
    }

    #[test]
    fn issue_three_refusals_name_the_field() {
        let cases = [
            (r#"{"learn_from": "x"}"#, "learn_from"),
            (r#"{"trusted_hops": -1}"#, "trusted_hops"),
            (r#"{"trusted_hops": 17}"#, "trusted_hops"),
            (r#"{"trusted_hops": "1"}"#, "trusted_hops"),
            (r#"{"keys": []}"#, "keys"),
            (r#"{"keys": "abc"}"#, "keys"),
            (r#"{"keys": ["notbase64!"]}"#, "keys[0]"),
            (r#"{"keys": ["AAAAAAAAAAAAAAAAAAAAAA=="]}"#, "keys[0]"),
            (r#"{"keys": [1]}"#, "keys[0]"),
            (r#"{"on_unavailable": "x"}"#, "on_unavailable"),
            (r#"{"unavailable_status": 99}"#, "unavailable_status"),
            (r#"{"unavailable_status": 600}"#, "unavailable_status"),
            (r#"{"retry_after": "5"}"#, "retry_after"),
            (r#"{"max_sessions": 0}"#, "max_sessions"),
            (r#"{"max_sessions": "10"}"#, "max_sessions"),
            (
                r#"{"upstream": {"cluster_header": ""}}"#,
                "upstream.cluster_header",
            ),
            (
                r#"{"upstream": {"cluster_header": "x-tether-host"}}"#,
                "upstream.cluster_header",
            ),
            (
                r#"{"type": "header", "session_name": "cookie"}"#,
                "session_name",
            ),
            (r#"{"routes": 5}"#, "routes"),
            (r#"{"routes": {"r": 5}}"#, "routes.r"),
            (r#"{"routes": {"r": {"bogus": 1}}}"#, "routes.r.bogus"),
            (
                r#"{"routes": {"r": {"cookie": {"same_site": "x"}}}}"#,
                "routes.r.cookie.same_site",
            ),
            (
                r#"{"routes": {"r": {"disabled": "yes"}}}"#,
                "routes.r.disabled",
            ),
            (r#"{"routes": {"r": {"routes": {}}}}"#, "routes.r.routes"),
        ];
        for (json, field) in cases {
            let e = PluginConfig::parse(json.as_bytes()).expect_err(json);
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    #[test]
    fn routes_inherit_and_override() {
        let c = PluginConfig::parse(
            br#"{"session_name": "s", "idle_timeout": "10s", "cookie": {"path": "/", "secure": true},
                 "routes": {"cart": {"session_name": "cart", "cookie": {"path": "/cart"}},
                            "api": {"disabled": true}}}"#,
        )
        .unwrap();
        assert_eq!(c.default.session_name, "s");
        let cart = c
            .routes
            .iter()
            .find(|(n, _)| n == "cart")
            .unwrap()
            .1
            .as_ref()
            .unwrap();
        assert_eq!(cart.session_name, "cart");
        assert_eq!(cart.cookie.path, "/cart");
        assert!(
            cart.cookie.secure,
            "fields a route leaves out come from the top level"
        );
        assert_eq!(cart.idle_timeout_ms, Some(10_000));
        assert!(c.routes.iter().any(|(n, s)| n == "api" && s.is_none()));
    }
}
