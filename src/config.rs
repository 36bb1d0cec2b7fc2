//! Plugin configuration: the JSON a user writes, read into typed structs (serde, unknown fields
//! refused) and then checked for meaning and compiled into [`Config`], the form the request
//! path uses. Either stage refuses with one [`ConfigError`] naming the field's path
//! (`routes.cart.cookie.same_site: ...`), which is what a person reading Envoy's log needs.
//!
//! A route's fields override the top level's (objects merge field by field). A field that does
//! not apply to the session type it is written for is refused (`trusted_hops` with `cookie`);
//! one a route inherits from the top level and cannot use is ignored.

use crate::pin::Lifetimes;
use crate::secret::{Key, KEY_LEN};
use crate::table::TableShape;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// Defaults, named once; docs/configuration.md lists the same values.
pub const DEFAULT_SESSION_NAME: &str = "tether";
pub const DEFAULT_HOST_HEADER: &str = "x-tether-host";
pub const DEFAULT_COOKIE_PATH: &str = "/";
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
pub const DEFAULT_UNAVAILABLE_STATUS: u16 = 503;
pub const DEFAULT_RETRY_AFTER_S: u64 = 5;
/// Bounds that keep a typo from becoming an outage or an allocation storm.
pub const MAX_MAX_SESSIONS: usize = 10_000_000;
pub const MIN_MAX_SESSIONS: usize = 8;
pub const MAX_TRUSTED_HOPS: usize = 16;
pub const MAX_KEYS: usize = 8;
/// The longest secret name `keys_secret` takes.
pub const MAX_SECRET_NAME: usize = 256;
/// Longest session name (a cookie, header or query parameter name).
pub const MAX_NAME_LEN: usize = 128;
/// The request header tether sets on a strict session's requests, for the route that keeps
/// them on their endpoint (envoy/envoy.yaml's `app-strict`). Owned like the host header.
pub const STRICT_HEADER: &str = "x-tether-strict";

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

// ------------------------------------------------------------------------------------------
// The shape: what serde reads.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
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

impl SessionType {
    fn name(self) -> &'static str {
        match self {
            SessionType::Cookie => "cookie",
            SessionType::Header => "header",
            SessionType::Learn => "learn",
            SessionType::SourceIp => "source_ip",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LearnFrom {
    /// The backend sets a cookie named `session_name` (e.g. JSESSIONID).
    Cookie,
    /// The client sends a request header named `session_name`.
    Header,
    /// The client sends a query parameter named `session_name`.
    Query,
    /// The backend names the session in a response header `session_name` (MCP's
    /// `Mcp-Session-Id`), and the client sends it back (under `request_header`, by default the
    /// same name).
    ResponseHeader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OnUnavailable {
    Rebalance,
    Strict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifetimeType {
    /// A browser-session cookie: no Expires, no Max-Age.
    Session,
    /// `Max-Age` set to what is left of `absolute_timeout`.
    Permanent,
}

/// Every field of a policy, as written (`None`: not written, or `null`). The same struct reads
/// the top level and each route; where `routes` and `disabled` may stand is checked after.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object of tether's fields")]
struct Fields {
    #[serde(rename = "type")]
    kind: Option<SessionType>,
    session_name: Option<Name>,
    learn_from: Option<LearnFrom>,
    trusted_hops: Option<u64>,
    keys: Option<Vec<KeyText>>,
    keys_secret: Option<SecretName>,
    cookie: Option<CookieFields>,
    absolute_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    on_unavailable: Option<OnUnavailable>,
    unavailable_status: Option<u64>,
    retry_after: Option<Duration>,
    max_sessions: Option<u64>,
    request_header: Option<Name>,
    envelope: Option<bool>,
    upstream: Option<UpstreamFields>,
    routes: Option<BTreeMap<String, Fields>>,
    disabled: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object of cookie attributes")]
struct CookieFields {
    path: Option<CookiePath>,
    domain: Option<CookieDomain>,
    secure: Option<bool>,
    http_only: Option<bool>,
    same_site: Option<SameSite>,
    lifetime_type: Option<LifetimeType>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object with host_header and cluster_header"
)]
struct UpstreamFields {
    host_header: Option<Name>,
    cluster_header: Option<Name>,
}

/// An RFC 7230 `token` (what both a cookie name and a header name may be made of).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Name(String);

/// A key: base64 (either alphabet, padded or not) of `KEY_LEN` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyText(Key);

/// One of Envoy's generic secrets (`keys_secret`): its name, and where Envoy gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SecretName(KeysSecret);

/// Reads a secret's value for `Config::resolve_keys`: `Ok(None)` while Envoy has none yet, an
/// error line when it cannot be read.
pub type ReadSecret<'a> = dyn FnMut(&KeysSecret) -> Result<Option<Vec<u8>>, String> + 'a;

/// Where a policy's keys come from when they are not written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysSecret {
    /// The secret's name in Envoy.
    pub name: String,
    /// An Envoy `ConfigSource` (JSON) that serves the secret by SDS; `None`: the bootstrap's
    /// `static_resources.secrets`.
    pub config_source: Option<String>,
}

/// A Gateway API duration, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Duration(u64);

#[derive(Debug, Clone, PartialEq, Eq)]
struct CookiePath(String);

#[derive(Debug, Clone, PartialEq, Eq)]
struct CookieDomain(String);

/// Reads a string and checks it with `check`, whose error becomes the field's error.
fn checked_string<'de, D, T>(
    d: D,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(d)?;
    check(&text).map_err(de::Error::custom)
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| check_token(s).map(|()| Name(s.to_string())))
    }
}

fn secret_name(name: &str) -> Result<String, String> {
    let visible = name.bytes().all(|b| b.is_ascii_graphic());
    if name.is_empty() || name.len() > MAX_SECRET_NAME || !visible {
        return Err(format!(
            "must name an Envoy secret: 1 to {MAX_SECRET_NAME} visible ASCII characters"
        ));
    }
    Ok(name.to_string())
}

/// `keys_secret` as written: the secret's name (the bootstrap's `static_resources.secrets`),
/// or `{"name": ..., "path": ...}` (served by SDS from that file, which Envoy watches), or
/// `{"name": ..., "ads": true}` (served by SDS over the bootstrap's ADS). A visitor of its
/// own: reading any JSON value here would bring a second copy of serde_json's value
/// deserializer into the module.
struct SecretVisitor;

const SECRET_SHAPE: &str = "a secret's name, or {\"name\": ..., \"path\": <an SDS file>}, or \
                            {\"name\": ..., \"ads\": true}";

impl<'de> de::Visitor<'de> for SecretVisitor {
    type Value = KeysSecret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SECRET_SHAPE)
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<KeysSecret, E> {
        Ok(KeysSecret {
            name: secret_name(name).map_err(E::custom)?,
            config_source: None,
        })
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<KeysSecret, A::Error> {
        let (mut name, mut path, mut ads) = (None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "name" => name = Some(map.next_value::<String>()?),
                "path" => path = Some(map.next_value::<String>()?),
                "ads" => ads = Some(map.next_value::<bool>()?),
                _ => return Err(de::Error::custom(format!("must be {SECRET_SHAPE}"))),
            }
        }
        let source = match (path, ads) {
            (Some(path), None) if !path.is_empty() => {
                format!(
                    r#"{{"path_config_source":{{"path":"{}"}}}}"#,
                    json_escaped(&path)
                )
            }
            (None, Some(true)) => r#"{"ads":{}}"#.to_string(),
            _ => return Err(de::Error::custom(format!("must be {SECRET_SHAPE}"))),
        };
        let name = name.ok_or_else(|| de::Error::custom(format!("must be {SECRET_SHAPE}")))?;
        Ok(KeysSecret {
            name: secret_name(&name).map_err(de::Error::custom)?,
            config_source: Some(source),
        })
    }
}

/// `text` inside a JSON string.
fn json_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

impl<'de> Deserialize<'de> for SecretName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretVisitor).map(SecretName)
    }
}

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| {
            let bytes = crate::encoding::base64_decode(s.as_bytes())
                .ok_or_else(|| "is not base64".to_string())?;
            let len = bytes.len();
            Key::try_from(bytes)
                .map(KeyText)
                .map_err(|_| format!("decodes to {len} bytes; a key is {KEY_LEN} random bytes"))
        })
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| parse_duration_ms(s).map(Duration))
    }
}

impl<'de> Deserialize<'de> for CookiePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| {
            if !s.starts_with('/') {
                return Err(format!("{s:?} must start with '/'"));
            }
            check_attribute_text(s).map(|()| CookiePath(s.to_string()))
        })
    }
}

impl<'de> Deserialize<'de> for CookieDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| {
            if s.is_empty() {
                return Err("must not be empty (use null for a host-only cookie)".into());
            }
            check_attribute_text(s).map(|()| CookieDomain(s.to_string()))
        })
    }
}

/// RFC 7230 `token`, at most `MAX_NAME_LEN` characters.
fn check_token(value: &str) -> Result<(), String> {
    const SEPARATORS: &[u8] = b"!#$%&'*+-.^_`|~";
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!("must be at most {MAX_NAME_LEN} characters"));
    }
    match value
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || SEPARATORS.contains(b)))
    {
        Some(bad) => Err(format!(
            "{value:?} has the character {:?}, not allowed in a name",
            char::from(bad)
        )),
        None => Ok(()),
    }
}

fn check_attribute_text(value: &str) -> Result<(), String> {
    match value
        .chars()
        .find(|c| *c == ';' || c.is_control() || c.is_whitespace() || !c.is_ascii())
    {
        Some(bad) => Err(format!("{value:?} has the character {bad:?}")),
        None => Ok(()),
    }
}

/// Parses a Gateway API duration (`1h`, `30m`, `10s`, `500ms`, `1h30m`): one to four parts,
/// each of one to five digits and a unit. Zero is refused: a timeout of nothing is a mistake.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("{text:?} is not a duration like \"1h\", \"30m\", \"10s\", \"500ms\" or \"1h30m\"")
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
        return Err(format!(
            "{text:?} is zero; leave the field out for no limit"
        ));
    }
    Ok(total)
}

// ------------------------------------------------------------------------------------------
// The compiled form.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSettings {
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    pub lifetime_type: LifetimeType,
}

impl Default for CookieSettings {
    fn default() -> Self {
        CookieSettings {
            path: DEFAULT_COOKIE_PATH.to_string(),
            domain: None,
            secure: false,
            http_only: true,
            same_site: SameSite::Lax,
            lifetime_type: LifetimeType::Session,
        }
    }
}

/// `on_unavailable: strict`: the answer when the pinned endpoint cannot serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strict {
    pub status: u16,
    pub retry_after_s: u64,
}

/// How a pinned request is routed: the headers tether sets for Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// Lower-case header name that Envoy's `override_host` policy reads.
    pub host_header: String,
    /// Lower-case header name a route matches to pick the session's cluster.
    pub cluster_header: Option<String>,
    /// `None`: `on_unavailable: rebalance`, the session moves.
    pub strict: Option<Strict>,
}

/// Where a learned id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LearnSource {
    /// The application's cookie `session_name`; replicas agree through a companion cookie with
    /// these attributes.
    Cookie { companion: CookieSettings },
    /// The request header `header` (lower case).
    Header { header: String },
    /// The query parameter `session_name`.
    Query,
    /// The response header `header` (lower case) names the session; the client sends it back in
    /// `request_header`. `envelope`: tether hands the client a sealed token holding the id and
    /// the pin instead of the id (replicas agree, nothing is stored); else the id itself, bound
    /// in the table.
    ResponseHeader {
        header: String,
        request_header: String,
        envelope: bool,
    },
}

/// The session type with the settings only it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Cookie(CookieSettings),
    /// `header`: the lower-case header name.
    Header {
        header: String,
    },
    Learn {
        source: LearnSource,
        max_sessions: usize,
    },
    SourceIp {
        trusted_hops: usize,
        max_sessions: usize,
    },
}

/// One policy, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub session_name: String,
    pub kind: Kind,
    pub lifetimes: Lifetimes,
    pub routing: Routing,
    /// Token keys: the first seals, all open. Empty: the per-Envoy secret.
    pub keys: Vec<Key>,
    /// The Envoy secret the keys are read from (`keys_secret`), by the adapter, before any
    /// traffic (`Config::resolve_keys`); `keys` is empty until then.
    pub keys_secret: Option<KeysSecret>,
}

impl Settings {
    pub fn session_type(&self) -> SessionType {
        match self.kind {
            Kind::Cookie(_) => SessionType::Cookie,
            Kind::Header { .. } => SessionType::Header,
            Kind::Learn { .. } => SessionType::Learn,
            Kind::SourceIp { .. } => SessionType::SourceIp,
        }
    }

    /// The binding table this policy keeps, for the types that keep one.
    pub fn table_shape(&self) -> Option<TableShape> {
        match self.kind {
            Kind::Learn { max_sessions, .. } | Kind::SourceIp { max_sessions, .. } => {
                Some(TableShape {
                    capacity: max_sessions,
                    lifetimes: self.lifetimes,
                })
            }
            Kind::Cookie(_) | Kind::Header { .. } => None,
        }
    }

    /// One policy without routes (tests and tools).
    pub fn parse(bytes: &[u8]) -> Result<Settings, ConfigError> {
        let config = Config::parse(bytes)?;
        if !config.routes.is_empty() {
            return Err(err("routes", "not allowed here"));
        }
        Ok(config.default)
    }
}

impl Default for Settings {
    fn default() -> Self {
        // The empty configuration always compiles; the fallback is never taken.
        compile(&Fields::default(), "").unwrap_or(Settings {
            session_name: DEFAULT_SESSION_NAME.to_string(),
            kind: Kind::Cookie(CookieSettings::default()),
            lifetimes: Lifetimes::default(),
            routing: Routing {
                host_header: DEFAULT_HOST_HEADER.to_string(),
                cluster_header: None,
                strict: None,
            },
            keys: Vec::new(),
            keys_secret: None,
        })
    }
}

/// The whole plugin configuration: the top-level policy, and per-route policies keyed by
/// Envoy route name (`None`: tether is disabled on that route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub default: Settings,
    pub routes: Vec<(String, Option<Settings>)>,
}

impl Config {
    /// Parses and checks the plugin configuration. Empty input (no configuration) means
    /// every default.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Config {
                default: Settings::default(),
                routes: Vec::new(),
            });
        }
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| err("", format!("configuration is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(err("", "configuration must be a JSON object"));
        }
        let top: Fields = serde_path_to_error::deserialize(value).map_err(shape_error)?;
        if top.disabled.is_some() {
            return Err(err(
                "disabled",
                "only a route can be disabled (routes.<name>.disabled)",
            ));
        }
        check_applies(&top, &top, "")?;
        let default = compile(&top, "")?;
        let mut routes = Vec::new();
        for (name, route) in top.routes.iter().flatten() {
            let prefix = format!("routes.{name}.");
            if name.is_empty() {
                return Err(err("routes", "a route name must not be empty"));
            }
            if route.routes.is_some() {
                return Err(err(&format!("{prefix}routes"), "routes do not nest"));
            }
            let merged = merge(&top, route);
            check_applies(route, &merged, &prefix)?;
            if route.disabled == Some(true) {
                routes.push((name.clone(), None));
            } else {
                routes.push((name.clone(), Some(compile(&merged, &prefix)?)));
            }
        }
        let config = Config { default, routes };
        config.check_shared_tables()?;
        Ok(config)
    }

    /// Fills the keys of every policy with `keys_secret` from that secret's value, as `read`
    /// gives it (the adapter asks Envoy; `None`: not delivered yet, the keys stay empty); the
    /// first refusal is the configuration's, naming the field. A secret holds keys as `keys`
    /// lists them, separated by commas or white space.
    pub fn resolve_keys(&mut self, read: &mut ReadSecret<'_>) -> Result<(), ConfigError> {
        let routes = self
            .routes
            .iter_mut()
            .filter_map(|(name, s)| s.as_mut().map(|s| (format!("routes.{name}."), s)));
        for (prefix, settings) in std::iter::once((String::new(), &mut self.default)).chain(routes)
        {
            let Some(secret) = &settings.keys_secret else {
                continue;
            };
            let field = format!("{prefix}keys_secret");
            let Some(value) = read(secret).map_err(|problem| err(&field, problem))? else {
                settings.keys.clear();
                continue;
            };
            settings.keys = keys_in_secret(&value).map_err(|problem| {
                err(&field, format!("the secret \"{}\" {problem}", secret.name))
            })?;
        }
        Ok(())
    }

    /// The first `keys_secret` field written, by its path (a host that cannot read Envoy's
    /// secrets refuses it).
    pub fn keys_secret_field(&self) -> Option<String> {
        self.policies()
            .find(|(_, s)| s.keys_secret.is_some())
            .map(|(route, _)| match route {
                "" => "keys_secret".to_string(),
                route => format!("routes.{route}.keys_secret"),
            })
    }

    /// Every enabled policy: the top level's first, then the routes' in name order.
    pub fn policies(&self) -> impl Iterator<Item = (&str, &Settings)> {
        std::iter::once(("", &self.default)).chain(
            self.routes
                .iter()
                .filter_map(|(name, s)| s.as_ref().map(|s| (name.as_str(), s))),
        )
    }

    /// Policies that name the same binding table (the same session name) share its buckets in
    /// shared data: they must agree on its capacity and lifetimes, or each would evict and
    /// expire the other's bindings by its own rules.
    fn check_shared_tables(&self) -> Result<(), ConfigError> {
        let tables: Vec<(&str, &Settings, TableShape)> = self
            .policies()
            .filter_map(|(route, s)| s.table_shape().map(|shape| (route, s, shape)))
            .collect();
        for (i, (route, s, shape)) in tables.iter().enumerate() {
            let earlier = tables.iter().take(i).find(|(_, o, other)| {
                o.session_name == s.session_name
                    && (other != shape || o.session_type() != s.session_type())
            });
            if let Some((other_route, ..)) = earlier {
                let at = |r: &str| {
                    if r.is_empty() {
                        "the top level".to_string()
                    } else {
                        format!("routes.{r}")
                    }
                };
                let field = if route.is_empty() {
                    "session_name".to_string()
                } else {
                    format!("routes.{route}.session_name")
                };
                return Err(err(
                    &field,
                    format!(
                        "{:?} names the binding table of {} with another type, max_sessions or \
                         timeouts; give both the same settings or different session names",
                        s.session_name,
                        at(other_route)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A serde error as a `ConfigError`: the path serde was at, and its message. An unknown field
/// is reported at its own path, not its parent's.
fn shape_error(e: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let path = e.path().to_string();
    let mut field = if path == "." { String::new() } else { path };
    let problem = e.into_inner().to_string();
    let unknown = problem
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    if let Some(name) = unknown.filter(|n| field.rsplit('.').next() != Some(*n)) {
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(name);
    }
    err(&field, problem)
}

/// `over` on top of `base`, field by field (objects too); `routes` and `disabled` are the
/// route's own.
fn merge(base: &Fields, over: &Fields) -> Fields {
    let cookie = match (&base.cookie, &over.cookie) {
        (Some(b), Some(o)) => Some(CookieFields {
            path: o.path.clone().or_else(|| b.path.clone()),
            domain: o.domain.clone().or_else(|| b.domain.clone()),
            secure: o.secure.or(b.secure),
            http_only: o.http_only.or(b.http_only),
            same_site: o.same_site.or(b.same_site),
            lifetime_type: o.lifetime_type.or(b.lifetime_type),
        }),
        (b, o) => o.clone().or_else(|| b.clone()),
    };
    let upstream = match (&base.upstream, &over.upstream) {
        (Some(b), Some(o)) => Some(UpstreamFields {
            host_header: o.host_header.clone().or_else(|| b.host_header.clone()),
            cluster_header: o
                .cluster_header
                .clone()
                .or_else(|| b.cluster_header.clone()),
        }),
        (b, o) => o.clone().or_else(|| b.clone()),
    };
    Fields {
        kind: over.kind.or(base.kind),
        session_name: over
            .session_name
            .clone()
            .or_else(|| base.session_name.clone()),
        learn_from: over.learn_from.or(base.learn_from),
        trusted_hops: over.trusted_hops.or(base.trusted_hops),
        // A route that names its keys either way replaces both of the top level's.
        keys: if over.keys.is_some() || over.keys_secret.is_some() {
            over.keys.clone()
        } else {
            base.keys.clone()
        },
        keys_secret: if over.keys.is_some() || over.keys_secret.is_some() {
            over.keys_secret.clone()
        } else {
            base.keys_secret.clone()
        },
        cookie,
        absolute_timeout: over.absolute_timeout.or(base.absolute_timeout),
        idle_timeout: over.idle_timeout.or(base.idle_timeout),
        on_unavailable: over.on_unavailable.or(base.on_unavailable),
        unavailable_status: over.unavailable_status.or(base.unavailable_status),
        retry_after: over.retry_after.or(base.retry_after),
        max_sessions: over.max_sessions.or(base.max_sessions),
        request_header: over
            .request_header
            .clone()
            .or_else(|| base.request_header.clone()),
        envelope: over.envelope.or(base.envelope),
        upstream,
        routes: None,
        disabled: over.disabled,
    }
}

/// Refuses a field written for a type that has no use for it.
/// `effective`: the fields the policy ends up with (a route's merged with the top level's).
fn check_applies(written: &Fields, effective: &Fields, prefix: &str) -> Result<(), ConfigError> {
    let kind = effective.kind.unwrap_or(SessionType::Cookie);
    let learn_from = effective.learn_from;
    let learns = |from: LearnFrom| {
        kind == SessionType::Learn && learn_from.unwrap_or(LearnFrom::Cookie) == from
    };
    let learns_cookie = learns(LearnFrom::Cookie);
    let learns_response = learns(LearnFrom::ResponseHeader);
    let envelopes = learns_response && effective.envelope != Some(false);
    let seals =
        matches!(kind, SessionType::Cookie | SessionType::Header) || learns_cookie || envelopes;
    let has_cookie = kind == SessionType::Cookie || learns_cookie;
    let keeps_table = matches!(kind, SessionType::Learn | SessionType::SourceIp);
    let checks = [
        (
            "learn_from",
            written.learn_from.is_some(),
            kind == SessionType::Learn,
        ),
        (
            "trusted_hops",
            written.trusted_hops.is_some(),
            kind == SessionType::SourceIp,
        ),
        ("max_sessions", written.max_sessions.is_some(), keeps_table),
        ("keys", written.keys.is_some(), seals),
        ("keys_secret", written.keys_secret.is_some(), seals),
        ("cookie", written.cookie.is_some(), has_cookie),
        (
            "request_header",
            written.request_header.is_some(),
            learns_response,
        ),
        ("envelope", written.envelope.is_some(), learns_response),
    ];
    match checks
        .iter()
        .find(|(_, present, applies)| *present && !applies)
    {
        Some((field, ..)) => {
            let what = if learn_from.is_some() && kind == SessionType::Learn {
                format!(
                    "type \"learn\" with learn_from {:?}",
                    learn_name(learn_from)
                )
            } else {
                format!("type {:?}", kind.name())
            };
            Err(err(
                &format!("{prefix}{field}"),
                format!("does not apply to {what}"),
            ))
        }
        None => Ok(()),
    }
}

fn learn_name(from: Option<LearnFrom>) -> &'static str {
    match from.unwrap_or(LearnFrom::Cookie) {
        LearnFrom::Cookie => "cookie",
        LearnFrom::Header => "header",
        LearnFrom::Query => "query",
        LearnFrom::ResponseHeader => "response_header",
    }
}

/// Headers Envoy or HTTP itself needs: tether must never set, remove or carry sessions in them.
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

/// The meaning of one policy's merged fields.
/// The keys a secret holds: base64 keys as `keys` takes them, separated by commas or white
/// space, the first sealing. What is wrong is said by position, never with the secret's bytes.
fn keys_in_secret(value: &[u8]) -> Result<Vec<Key>, String> {
    let texts: Vec<&[u8]> = value
        .split(|b| *b == b',' || b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
        .collect();
    if texts.is_empty() || texts.len() > MAX_KEYS {
        return Err(format!(
            "holds {} keys: it must hold 1 to {MAX_KEYS}, separated by commas or white space",
            texts.len()
        ));
    }
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            crate::encoding::base64_decode(text)
                .and_then(|bytes| Key::try_from(bytes).ok())
                .ok_or_else(|| {
                    format!(
                        "holds a key {} that is not base64 of {KEY_LEN} bytes (`tether keygen` makes one)",
                        i + 1
                    )
                })
        })
        .collect()
}

fn compile(f: &Fields, prefix: &str) -> Result<Settings, ConfigError> {
    let at = |field: &str| format!("{prefix}{field}");
    let kind = f.kind.unwrap_or(SessionType::Cookie);
    let session_name = f
        .session_name
        .as_ref()
        .map_or(DEFAULT_SESSION_NAME.to_string(), |n| n.0.clone());

    let cookie = compile_cookie(f, prefix)?;
    let lifetimes = Lifetimes {
        absolute_ms: f.absolute_timeout.map(|d| d.0),
        idle_ms: f.idle_timeout.map(|d| d.0),
    };
    let learns_cookie = kind == SessionType::Learn
        && f.learn_from.unwrap_or(LearnFrom::Cookie) == LearnFrom::Cookie;
    if (kind == SessionType::Cookie || learns_cookie)
        && cookie.lifetime_type == LifetimeType::Permanent
        && lifetimes.absolute_ms.is_none()
    {
        return Err(err(
            &at("cookie.lifetime_type"),
            "\"permanent\" needs absolute_timeout (the cookie's Max-Age)",
        ));
    }

    let max_sessions = match f.max_sessions {
        None => DEFAULT_MAX_SESSIONS,
        Some(n) => in_range(
            &at("max_sessions"),
            n,
            MIN_MAX_SESSIONS as u64,
            MAX_MAX_SESSIONS as u64,
        )?,
    };
    let trusted_hops = match f.trusted_hops {
        None => 0,
        Some(n) => in_range(&at("trusted_hops"), n, 0, MAX_TRUSTED_HOPS as u64)?,
    };

    let routing = compile_routing(f, prefix)?;
    let header_name = session_name.to_ascii_lowercase();
    let kind = match kind {
        SessionType::Cookie => Kind::Cookie(cookie),
        SessionType::Header => Kind::Header {
            header: carrier_header(&at("session_name"), &header_name, &routing)?,
        },
        SessionType::Learn => Kind::Learn {
            source: match f.learn_from.unwrap_or(LearnFrom::Cookie) {
                LearnFrom::Cookie => LearnSource::Cookie { companion: cookie },
                LearnFrom::Header => LearnSource::Header {
                    header: carrier_header(&at("session_name"), &header_name, &routing)?,
                },
                LearnFrom::Query => LearnSource::Query,
                LearnFrom::ResponseHeader => {
                    let request_header = match &f.request_header {
                        Some(n) => carrier_header(
                            &at("request_header"),
                            &n.0.to_ascii_lowercase(),
                            &routing,
                        )?,
                        None => header_name.clone(),
                    };
                    LearnSource::ResponseHeader {
                        header: carrier_header(&at("session_name"), &header_name, &routing)?,
                        request_header,
                        envelope: f.envelope.unwrap_or(true),
                    }
                }
            },
            max_sessions,
        },
        SessionType::SourceIp => Kind::SourceIp {
            trusted_hops,
            max_sessions,
        },
    };

    let keys = match &f.keys {
        None => Vec::new(),
        Some(keys) if keys.is_empty() || keys.len() > MAX_KEYS => {
            return Err(err(
                &at("keys"),
                format!("must list 1 to {MAX_KEYS} keys (leave the field out for a random key per Envoy process)"),
            ))
        }
        Some(keys) => keys.iter().map(|k| k.0).collect(),
    };
    if f.keys.is_some() && f.keys_secret.is_some() {
        return Err(err(
            &at("keys_secret"),
            "give keys or keys_secret, not both",
        ));
    }
    Ok(Settings {
        session_name,
        kind,
        lifetimes,
        routing,
        keys,
        keys_secret: f.keys_secret.as_ref().map(|n| n.0.clone()),
    })
}

fn compile_cookie(f: &Fields, prefix: &str) -> Result<CookieSettings, ConfigError> {
    let d = CookieSettings::default();
    let Some(c) = &f.cookie else {
        return Ok(d);
    };
    let s = CookieSettings {
        path: c.path.as_ref().map_or(d.path, |p| p.0.clone()),
        domain: c.domain.as_ref().map(|p| p.0.clone()),
        secure: c.secure.unwrap_or(d.secure),
        http_only: c.http_only.unwrap_or(d.http_only),
        same_site: c.same_site.unwrap_or(d.same_site),
        lifetime_type: c.lifetime_type.unwrap_or(d.lifetime_type),
    };
    if s.same_site == SameSite::None && !s.secure {
        return Err(err(
            &format!("{prefix}cookie.same_site"),
            "\"none\" needs cookie.secure: true (browsers drop SameSite=None cookies without Secure)",
        ));
    }
    Ok(s)
}

fn compile_routing(f: &Fields, prefix: &str) -> Result<Routing, ConfigError> {
    let at = |field: &str| format!("{prefix}{field}");
    let upstream = f.upstream.clone().unwrap_or_default();
    let host_header = upstream
        .host_header
        .map_or(DEFAULT_HOST_HEADER.to_string(), |n| {
            n.0.to_ascii_lowercase()
        });
    let cluster_header = upstream.cluster_header.map(|n| n.0.to_ascii_lowercase());
    for (field, header) in [
        ("upstream.host_header", Some(&host_header)),
        ("upstream.cluster_header", cluster_header.as_ref()),
    ] {
        if let Some(h) = header {
            if RESERVED_HEADERS.contains(&h.as_str()) || h == STRICT_HEADER {
                return Err(err(
                    &at(field),
                    format!("{h:?} is a header Envoy or tether needs for itself"),
                ));
            }
        }
    }
    if cluster_header.as_ref() == Some(&host_header) {
        return Err(err(
            &at("upstream.cluster_header"),
            "must differ from upstream.host_header",
        ));
    }
    let strict = match f.on_unavailable.unwrap_or(OnUnavailable::Rebalance) {
        OnUnavailable::Rebalance => None,
        OnUnavailable::Strict => Some(Strict {
            status: match f.unavailable_status {
                None => DEFAULT_UNAVAILABLE_STATUS,
                Some(n) => in_range(&at("unavailable_status"), n, 200, 599)?,
            },
            retry_after_s: f
                .retry_after
                .map_or(DEFAULT_RETRY_AFTER_S, |d| d.0.div_ceil(1000)),
        }),
    };
    if strict.is_none() {
        if let Some(n) = f.unavailable_status {
            // Checked even where unused, so a typo does not wait for the day strict is on.
            in_range::<u16>(&at("unavailable_status"), n, 200, 599)?;
        }
    }
    Ok(Routing {
        host_header,
        cluster_header,
        strict,
    })
}

/// A session header's name, checked against the headers tether and Envoy need for themselves.
fn carrier_header(field: &str, name: &str, routing: &Routing) -> Result<String, ConfigError> {
    if RESERVED_HEADERS.contains(&name)
        || name == STRICT_HEADER
        || name == routing.host_header
        || Some(name) == routing.cluster_header.as_deref()
    {
        return Err(err(
            field,
            format!("{name:?} cannot carry sessions as a header"),
        ));
    }
    Ok(name.to_string())
}

/// `n` if it lies in `min..=max` (and so fits every integer type those fit).
fn in_range<T: TryFrom<u64> + Copy>(
    field: &str,
    n: u64,
    min: u64,
    max: u64,
) -> Result<T, ConfigError> {
    match T::try_from(n) {
        Ok(v) if (min..=max).contains(&n) => Ok(v),
        _ => Err(err(
            field,
            format!("expected a whole number from {min} to {max}, got {n}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn parse(json: &str) -> Result<Settings, ConfigError> {
        Settings::parse(json.as_bytes())
    }

    fn cookie_of(s: &Settings) -> &CookieSettings {
        match &s.kind {
            Kind::Cookie(c) => c,
            other => panic!("not a cookie policy: {other:?}"),
        }
    }

    #[test]
    fn empty_and_empty_object_give_defaults() {
        assert_eq!(parse("").unwrap(), Settings::default());
        assert_eq!(parse("  \n").unwrap(), Settings::default());
        assert_eq!(parse("{}").unwrap(), Settings::default());
        let d = Settings::default();
        assert_eq!(d.session_name, "tether");
        assert_eq!(d.session_type(), SessionType::Cookie);
        assert_eq!(d.routing.host_header, "x-tether-host");
        assert_eq!(d.routing.strict, None);
        let c = cookie_of(&d);
        assert_eq!(c.path, "/");
        assert!(c.http_only);
        assert!(!c.secure);
        assert_eq!(c.same_site, SameSite::Lax);
        assert_eq!(c.lifetime_type, LifetimeType::Session);
        assert_eq!(d.lifetimes, Lifetimes::default());
        assert!(d.keys.is_empty());
    }

    #[test]
    fn full_example_from_the_docs() {
        let s = parse(
            r#"{"type": "cookie", "session_name": "sid",
                "cookie": {"path": "/app", "domain": "example.com", "secure": true, "http_only": false,
                           "same_site": "strict", "lifetime_type": "permanent"},
                "absolute_timeout": "24h", "idle_timeout": "30m",
                "upstream": {"host_header": "X-Pin"}}"#,
        )
        .unwrap();
        assert_eq!(s.session_name, "sid");
        let c = cookie_of(&s);
        assert_eq!(c.path, "/app");
        assert_eq!(c.domain.as_deref(), Some("example.com"));
        assert!(c.secure);
        assert!(!c.http_only);
        assert_eq!(c.same_site, SameSite::Strict);
        assert_eq!(c.lifetime_type, LifetimeType::Permanent);
        assert_eq!(s.lifetimes.absolute_ms, Some(86_400_000));
        assert_eq!(s.lifetimes.idle_ms, Some(1_800_000));
        assert_eq!(s.routing.host_header, "x-pin");
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
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
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
            assert!(parse_duration_ms(text).is_err(), "{text:?} accepted");
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
            (
                r#"{"upstream": {"host_header": "x-tether-strict"}}"#,
                "upstream.host_header",
            ),
            (r#"{"upstream": {"cluster": "x"}}"#, "upstream.cluster"),
            (r#"{"disabled": true}"#, "disabled"),
        ];
        for (json, field) in cases {
            let e = parse(json).expect_err(json);
            assert_eq!(e.field, field, "{json}: {e}");
            assert!(e.to_string().starts_with(field), "{e}");
            if !field.is_empty() {
                assert!(!e.to_string().contains(" at line "), "{e}");
            }
        }
    }

    #[test]
    fn same_site_none_with_secure_and_permanent_with_absolute_are_fine() {
        let s = parse(r#"{"cookie": {"same_site": "none", "secure": true, "lifetime_type": "permanent"}, "absolute_timeout": "1h"}"#).unwrap();
        assert_eq!(cookie_of(&s).same_site, SameSite::None);
        assert_eq!(cookie_of(&s).lifetime_type, LifetimeType::Permanent);
    }

    const KEY32: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn the_types_and_their_fields() {
        let s = parse(
            r#"{"type": "learn", "learn_from": "query", "on_unavailable": "strict",
                "unavailable_status": 429, "retry_after": "1500ms", "max_sessions": 1000,
                "upstream": {"cluster_header": "X-Tether-Cluster"}}"#,
        )
        .unwrap();
        assert_eq!(
            s.kind,
            Kind::Learn {
                source: LearnSource::Query,
                max_sessions: 1000
            }
        );
        assert_eq!(
            s.routing.strict,
            Some(Strict {
                status: 429,
                retry_after_s: 2
            }),
            "Retry-After is whole seconds, rounded up"
        );
        assert_eq!(
            s.routing.cluster_header.as_deref(),
            Some("x-tether-cluster")
        );
        let s = parse(r#"{"type": "source_ip", "trusted_hops": 2}"#).unwrap();
        assert_eq!(
            s.kind,
            Kind::SourceIp {
                trusted_hops: 2,
                max_sessions: DEFAULT_MAX_SESSIONS
            }
        );
        let s = parse(&format!(
            r#"{{"type": "header", "session_name": "X-Session", "keys": ["{KEY32}"]}}"#
        ))
        .unwrap();
        assert_eq!(
            s.kind,
            Kind::Header {
                header: "x-session".into()
            }
        );
        assert_eq!(s.keys.len(), 1);
        assert_eq!(s.keys[0][31], 31);
        let s =
            parse(r#"{"type": "learn", "session_name": "JSESSIONID", "cookie": {"path": "/app"}}"#)
                .unwrap();
        let Kind::Learn {
            source: LearnSource::Cookie { companion },
            ..
        } = &s.kind
        else {
            panic!("{:?}", s.kind)
        };
        assert_eq!(companion.path, "/app");
        let d = Settings::default();
        assert_eq!(d.routing.strict, None);
        assert_eq!(
            parse(r#"{"on_unavailable": "strict"}"#)
                .unwrap()
                .routing
                .strict,
            Some(Strict {
                status: 503,
                retry_after_s: 5
            })
        );
    }

    #[test]
    fn refusals_of_the_types_fields_name_the_field() {
        let cases = [
            (r#"{"type": "learn", "learn_from": "x"}"#, "learn_from"),
            (
                r#"{"type": "source_ip", "trusted_hops": -1}"#,
                "trusted_hops",
            ),
            (
                r#"{"type": "source_ip", "trusted_hops": 17}"#,
                "trusted_hops",
            ),
            (
                r#"{"type": "source_ip", "trusted_hops": "1"}"#,
                "trusted_hops",
            ),
            (r#"{"keys": []}"#, "keys"),
            (r#"{"keys": "abc"}"#, "keys"),
            (r#"{"keys": ["notbase64!"]}"#, "keys[0]"),
            (r#"{"keys": ["AAAAAAAAAAAAAAAAAAAAAA=="]}"#, "keys[0]"),
            (r#"{"keys": [1]}"#, "keys[0]"),
            (r#"{"on_unavailable": "x"}"#, "on_unavailable"),
            (r#"{"unavailable_status": 99}"#, "unavailable_status"),
            (
                r#"{"on_unavailable": "strict", "unavailable_status": 600}"#,
                "unavailable_status",
            ),
            (r#"{"retry_after": "5"}"#, "retry_after"),
            (r#"{"type": "learn", "max_sessions": 0}"#, "max_sessions"),
            (r#"{"type": "learn", "max_sessions": "10"}"#, "max_sessions"),
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
            (
                r#"{"type": "header", "session_name": "x-tether-host"}"#,
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
            (r#"{"routes": {"": {}}}"#, "routes"),
        ];
        for (json, field) in cases {
            let e = Config::parse(json.as_bytes()).expect_err(json);
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    /// Issue #12: a field that does not apply to the chosen type is refused, naming it.
    #[test]
    fn fields_that_do_not_apply_to_the_type_are_refused() {
        let cases = [
            (r#"{"trusted_hops": 1}"#, "trusted_hops", "cookie"),
            (
                r#"{"type": "header", "max_sessions": 10}"#,
                "max_sessions",
                "header",
            ),
            (
                r#"{"type": "cookie", "learn_from": "header"}"#,
                "learn_from",
                "cookie",
            ),
            (
                r#"{"type": "source_ip", "cookie": {"secure": true}}"#,
                "cookie",
                "source_ip",
            ),
            (
                r#"{"type": "header", "cookie": {"path": "/"}}"#,
                "cookie",
                "header",
            ),
            (
                r#"{"type": "source_ip", "keys": ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]}"#,
                "keys",
                "source_ip",
            ),
            (
                r#"{"type": "learn", "learn_from": "header", "cookie": {}}"#,
                "cookie",
                "header",
            ),
            (
                r#"{"type": "learn", "learn_from": "query", "trusted_hops": 1}"#,
                "trusted_hops",
                "query",
            ),
            (
                r#"{"routes": {"api": {"type": "header", "max_sessions": 9}}}"#,
                "routes.api.max_sessions",
                "header",
            ),
        ];
        for (json, field, kind) in cases {
            let e = Config::parse(json.as_bytes()).expect_err(json);
            assert_eq!(e.field, field, "{json}: {e}");
            assert!(
                e.problem.contains("does not apply") && e.problem.contains(kind),
                "{e}"
            );
        }
    }

    #[test]
    fn routes_inherit_and_override() {
        let c = Config::parse(
            br#"{"session_name": "s", "idle_timeout": "10s", "cookie": {"path": "/", "secure": true},
                 "routes": {"cart": {"session_name": "cart", "cookie": {"path": "/cart"}},
                            "api": {"disabled": true},
                            "mcp": {"type": "header", "session_name": "x-s"}}}"#,
        )
        .unwrap();
        assert_eq!(c.default.session_name, "s");
        let route = |name: &str| c.routes.iter().find(|(n, _)| n == name).unwrap().1.clone();
        let cart = route("cart").unwrap();
        assert_eq!(cart.session_name, "cart");
        assert_eq!(cookie_of(&cart).path, "/cart");
        assert!(
            cookie_of(&cart).secure,
            "fields a route leaves out come from the top level"
        );
        assert_eq!(cart.lifetimes.idle_ms, Some(10_000));
        assert_eq!(route("api"), None);
        let mcp = route("mcp").unwrap();
        assert_eq!(
            mcp.kind,
            Kind::Header {
                header: "x-s".into()
            },
            "the top level's cookie attributes are of no use here, and ignored"
        );
        assert_eq!(c.policies().count(), 3);
    }

    /// Issue #12, defect 9: two routes that share a binding table (one session name) with
    /// different settings interfered silently.
    #[test]
    fn policies_sharing_a_table_must_agree_on_it() {
        let e = Config::parse(
            br#"{"type": "learn", "session_name": "JSESSIONID", "max_sessions": 1000,
                 "routes": {"b": {"max_sessions": 2000}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "routes.b.session_name", "{e}");
        assert!(e.problem.contains("the top level"), "{e}");
        let e = Config::parse(
            br#"{"routes": {"a": {"type": "learn", "learn_from": "header", "session_name": "x-id", "idle_timeout": "1m"},
                            "b": {"type": "learn", "learn_from": "header", "session_name": "x-id"}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "routes.b.session_name", "{e}");
        assert!(e.problem.contains("routes.a"), "{e}");
        let e = Config::parse(
            br#"{"routes": {"a": {"type": "learn", "learn_from": "header", "session_name": "id"},
                            "b": {"type": "source_ip", "session_name": "id"}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "routes.b.session_name", "{e}");
        // The same table on purpose: one session across routes.
        Config::parse(
            br#"{"type": "learn", "session_name": "JSESSIONID",
                 "routes": {"a": {"idle_timeout": null}, "b": {}}}"#,
        )
        .unwrap();
        // Token sessions keep no table: names may repeat with any settings.
        Config::parse(br#"{"routes": {"a": {"idle_timeout": "1m"}, "b": {}}}"#).unwrap();
    }

    #[test]
    fn keys_come_from_an_envoy_secret_named_or_served_by_sds() {
        let mut c = Config::parse(
            br#"{"keys_secret": "tether-keys",
                 "routes": {"sds": {"type": "header", "keys_secret": {"name": "rotated",
                                    "path": "/etc/sds.yaml"}},
                            "own": {"keys": ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]},
                            "inherits": {"type": "header"}}}"#,
        )
        .unwrap();
        fn route(c: &Config, route: &str) -> Settings {
            c.routes
                .iter()
                .find(|(n, _)| n == route)
                .and_then(|(_, s)| s.clone())
                .unwrap()
        }
        let named = |r: &str| route(&c, r);
        assert_eq!(
            c.default.keys_secret,
            Some(KeysSecret {
                name: "tether-keys".into(),
                config_source: None
            })
        );
        let sds = named("sds").keys_secret.unwrap();
        assert_eq!(sds.name, "rotated");
        let source: serde_json::Value =
            serde_json::from_str(sds.config_source.as_deref().unwrap()).unwrap();
        assert_eq!(source["path_config_source"]["path"], "/etc/sds.yaml");
        let odd = Config::parse(br#"{"keys_secret": {"name": "x", "path": "/a \"b\"\\c\u0001"}}"#)
            .unwrap();
        let odd: serde_json::Value =
            serde_json::from_str(&odd.default.keys_secret.unwrap().config_source.unwrap()).unwrap();
        assert_eq!(odd["path_config_source"]["path"], "/a \"b\"\\c\u{1}");
        let ads = Config::parse(br#"{"keys_secret": {"name": "x", "ads": true}}"#).unwrap();
        assert_eq!(
            ads.default
                .keys_secret
                .and_then(|k| k.config_source)
                .as_deref(),
            Some(r#"{"ads":{}}"#)
        );
        // A route's own keys replace the secret it would inherit; no keys inherit it.
        assert_eq!(named("own").keys_secret, None);
        assert_eq!(named("own").keys.len(), 1);
        assert_eq!(named("inherits").keys_secret, c.default.keys_secret);

        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let b64 = |k: &[u8; 32]| crate::encoding::base64url_encode(k);
        let mut asked = Vec::new();
        c.resolve_keys(&mut |secret| {
            asked.push(secret.name.clone());
            Ok(match secret.name.as_str() {
                "tether-keys" => Some(format!("{}\n{}\n", b64(&k2), b64(&k1)).into_bytes()),
                _ => None,
            })
        })
        .unwrap();
        assert_eq!(
            asked,
            ["tether-keys", "tether-keys", "rotated"],
            "routes in name order"
        );
        let named = |r: &str| route(&c, r);
        assert_eq!(c.default.keys, vec![k2, k1], "the first seals");
        assert!(named("sds").keys.is_empty(), "not delivered yet");
        assert_eq!(named("inherits").keys, vec![k2, k1]);
        assert_eq!(named("own").keys.len(), 1, "written keys are left alone");
    }

    #[test]
    fn a_secret_without_usable_keys_is_refused_naming_the_field_not_its_bytes() {
        let mut c = Config::parse(br#"{"routes": {"r": {"keys_secret": "k"}}}"#).unwrap();
        let good = crate::encoding::base64url_encode(&[7u8; 32]);
        for (value, problem) in [
            ("".to_string(), "holds 0 keys"),
            (" , \n".to_string(), "holds 0 keys"),
            (
                format!("{good},not-a-key"),
                "holds a key 2 that is not base64 of 32 bytes",
            ),
            ("c2hvcnQ=".to_string(), "holds a key 1 that is not base64"),
            (vec![good.clone(); 9].join(" "), "holds 9 keys"),
        ] {
            let e = c
                .resolve_keys(&mut |_| Ok(Some(value.clone().into_bytes())))
                .unwrap_err();
            assert_eq!(e.field, "routes.r.keys_secret", "{e}");
            assert!(e.problem.starts_with("the secret \"k\" "), "{e}");
            assert!(e.problem.contains(problem), "{value:?}: {e}");
            assert!(
                !e.problem.contains(&good) && !e.problem.contains("not-a-key"),
                "{e}"
            );
        }
        let e = c
            .resolve_keys(&mut |_| Err("Envoy has no such secret".into()))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "routes.r.keys_secret: Envoy has no such secret"
        );
        for (json, field) in [
            (r#"{"keys_secret": ""}"#, "keys_secret"),
            (r#"{"keys_secret": "has space"}"#, "keys_secret"),
            (r#"{"keys_secret": 7}"#, "keys_secret"),
            (r#"{"keys_secret": {"name": "k"}}"#, "keys_secret"),
            (
                r#"{"keys_secret": {"name": "k", "config_source": {}, "x": 1}}"#,
                "keys_secret",
            ),
            (
                r#"{"keys_secret": "k", "keys": ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]}"#,
                "keys_secret",
            ),
            (
                r#"{"type": "source_ip", "keys_secret": "k"}"#,
                "keys_secret",
            ),
            (
                r#"{"routes": {"r": {"type": "source_ip", "keys_secret": "k"}}}"#,
                "routes.r.keys_secret",
            ),
        ] {
            let e = Config::parse(json.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }
}
