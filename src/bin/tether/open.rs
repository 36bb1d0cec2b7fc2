//! `tether keygen` and `tether open`: a key for `keys`, and where a token pins its session.

use crate::{check_config, input, utc};
use std::path::PathBuf;
use tether::config::{parse_duration_ms, Config, Kind, LearnSource};
use tether::encoding::{base64_decode, base64url_encode};
use tether::entropy::{Entropy, SystemEntropy};
use tether::pin::{Lifetimes, Pin};
use tether::seal::{check_form, Carrier, Sealer};
use tether::secret::{Key, KEY_LEN};

#[derive(clap::Args)]
pub struct Args {
    /// Keys to try, as in `keys` (base64 of 32 bytes): repeat the option, or separate them
    /// with commas. Without it, the keys of --config.
    #[arg(long, value_name = "KEY", num_args = 1.., value_delimiter = ',')]
    keys: Vec<String>,
    /// A plugin configuration (as check-config reads it) giving the keys, session names and
    /// timeouts of each policy.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The session name the token was sealed for (default: the name before the token, else
    /// "tether").
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The learned id next to a companion cookie (learn_from: cookie): such a token opens only
    /// beside its id.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// The policy's idle_timeout (e.g. 30m), to tell whether the session has expired.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    idle_timeout: Option<u64>,
    /// The policy's absolute_timeout (e.g. 24h).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    absolute_timeout: Option<u64>,
    /// The token, alone or as `name=TOKEN`, a Set-Cookie value, or `header-name: TOKEN`.
    token: Option<String>,
}

fn duration(text: &str) -> Result<u64, String> {
    parse_duration_ms(text)
}

pub fn keygen() -> bool {
    match new_key(&mut SystemEntropy) {
        Some(key) => {
            println!("{key}");
            true
        }
        None => {
            eprintln!("tether keygen: the operating system gave no random bytes");
            false
        }
    }
}

/// A key as people write them (`head -c32 /dev/urandom | base64`): standard base64, padded.
pub fn new_key(entropy: &mut dyn Entropy) -> Option<String> {
    let mut key = [0u8; KEY_LEN];
    if !entropy.fill(&mut key) {
        return None;
    }
    let mut text: String = base64url_encode(&key)
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            other => other,
        })
        .collect();
    while text.len() % 4 != 0 {
        text.push('=');
    }
    Some(text)
}

/// One way a token may have been sealed: its carrier, session name, keys and the bytes it is
/// bound to, with the lifetimes of the policy that issued it.
struct Candidate {
    carrier: Carrier,
    scope: String,
    keys: Vec<Key>,
    bound_to: Vec<u8>,
    lifetimes: Option<Lifetimes>,
}

/// What a token turned out to be.
#[derive(Debug)]
pub struct Opened {
    pub carrier: Carrier,
    pub scope: String,
    pub key_index: usize,
    pub key_count: usize,
    pub pin: Pin,
    pub payload: Vec<u8>,
    pub lifetimes: Option<Lifetimes>,
}

pub fn run(args: &Args) -> bool {
    match open(args) {
        Ok((opened, now)) => {
            let lines = report(&opened, now);
            for line in &lines.0 {
                println!("{line}");
            }
            lines.1
        }
        Err(e) => {
            eprintln!("tether open: {e}");
            false
        }
    }
}

fn open(args: &Args) -> Result<(Opened, u64), String> {
    let mut key_texts = args.keys.clone();
    let mut token = args.token.clone();
    // `--keys K1 K2 TOKEN`: the option took the token too; a token is never a key.
    if token.is_none() && key_texts.len() > 1 {
        token = key_texts.pop();
    }
    let token = token.ok_or("no TOKEN given (see tether open --help)")?;
    let keys = key_texts
        .iter()
        .map(|k| parse_key(k))
        .collect::<Result<Vec<Key>, String>>()?;
    let (prefix, token) = split_token(&token);
    check_form(token.as_bytes()).map_err(|e| format!("not a tether token: {e}"))?;
    let lifetimes_given = (args.idle_timeout.is_some() || args.absolute_timeout.is_some())
        .then_some(Lifetimes {
            idle_ms: args.idle_timeout,
            absolute_ms: args.absolute_timeout,
        });
    let candidates = match &args.config {
        Some(path) => from_config(path, &keys, args, lifetimes_given)?,
        None if keys.is_empty() => return Err("give --keys, or --config with keys".into()),
        None => from_keys(&keys, prefix, args, lifetimes_given),
    };
    let tried = candidates
        .iter()
        .map(|c| format!("{} {:?}", carrier_name(c.carrier), c.scope))
        .collect::<Vec<_>>()
        .join(", ");
    for c in &candidates {
        for (i, key) in c.keys.iter().enumerate() {
            let sealer = Sealer::new(std::slice::from_ref(key), c.carrier, &c.scope);
            if let Some((pin, payload)) = sealer.open_carrying(token.as_bytes(), &c.bound_to) {
                return Ok((
                    Opened {
                        carrier: c.carrier,
                        scope: c.scope.clone(),
                        key_index: i + 1,
                        key_count: c.keys.len(),
                        pin,
                        payload: payload.to_vec(),
                        lifetimes: c.lifetimes,
                    },
                    utc::now_ms(),
                ));
            }
        }
    }
    Err(format!(
        "no key opens it (tried {tried}): it was sealed under another key, for another session \
         name (--name), or is a companion cookie that opens only beside its id (--id)"
    ))
}

fn parse_key(text: &str) -> Result<Key, String> {
    base64_decode(text.trim().as_bytes())
        .and_then(|bytes| Key::try_from(bytes).ok())
        .ok_or_else(|| format!("--keys {text:?}: a key is base64 of {KEY_LEN} bytes"))
}

/// The name and the token of `name=TOKEN`, `Set-Cookie: name=TOKEN; Path=/` or
/// `name: TOKEN`. Tokens are base64url, which has neither `=` nor `:`.
pub fn split_token(input: &str) -> (Option<&str>, &str) {
    let text = input.trim();
    let text = ["set-cookie:", "cookie:"]
        .iter()
        .find_map(|p| {
            text.get(..p.len())
                .filter(|head| head.eq_ignore_ascii_case(p))
                .and_then(|_| text.get(p.len()..))
        })
        .unwrap_or(text)
        .trim();
    let first = text.split(';').next().unwrap_or(text).trim();
    if let Some((name, value)) = first.split_once('=').or_else(|| first.split_once(':')) {
        return (Some(name.trim()), value.trim().trim_matches('"'));
    }
    (None, first.trim_matches('"'))
}

fn from_keys(
    keys: &[Key],
    prefix: Option<&str>,
    args: &Args,
    lifetimes: Option<Lifetimes>,
) -> Vec<Candidate> {
    let name = args
        .name
        .as_deref()
        .or(prefix)
        .unwrap_or(tether::config::DEFAULT_SESSION_NAME);
    let mut scopes = vec![name.to_string()];
    let lower = name.to_ascii_lowercase();
    if lower != name {
        scopes.push(lower);
    }
    let mut out = Vec::new();
    for scope in scopes {
        for carrier in [Carrier::Cookie, Carrier::Header, Carrier::Envelope] {
            out.push(Candidate {
                carrier,
                scope: scope.clone(),
                keys: keys.to_vec(),
                bound_to: Vec::new(),
                lifetimes,
            });
        }
        if let Some(id) = &args.id {
            // A companion cookie is named `tether-<session name>`.
            let companion = scope.strip_prefix("tether-").unwrap_or(&scope).to_string();
            out.push(Candidate {
                carrier: Carrier::Companion,
                scope: companion,
                keys: keys.to_vec(),
                bound_to: id.as_bytes().to_vec(),
                lifetimes,
            });
        }
    }
    out
}

fn from_config(
    path: &std::path::Path,
    keys: &[Key],
    args: &Args,
    lifetimes: Option<Lifetimes>,
) -> Result<Vec<Candidate>, String> {
    let name = path.display().to_string();
    let found = input::read(path).and_then(|b| check_config::plugin_configs(&b, &name))?;
    let mut out = Vec::new();
    for f in found {
        let config = Config::parse(&f.json)
            .map_err(|e| format!("{}: tether: invalid plugin configuration: {e}", f.label))?;
        for (_, s) in config.policies() {
            let (carrier, bound_to) = match &s.kind {
                Kind::Cookie(_) => (Carrier::Cookie, Vec::new()),
                Kind::Header { .. } => (Carrier::Header, Vec::new()),
                Kind::Learn {
                    source: LearnSource::Cookie { .. },
                    ..
                } => match &args.id {
                    Some(id) => (Carrier::Companion, id.as_bytes().to_vec()),
                    None => continue,
                },
                Kind::Learn {
                    source: LearnSource::ResponseHeader { envelope: true, .. },
                    ..
                } => (Carrier::Envelope, Vec::new()),
                Kind::Learn { .. } | Kind::SourceIp { .. } => continue,
            };
            let keys = if keys.is_empty() {
                s.keys.clone()
            } else {
                keys.to_vec()
            };
            if keys.is_empty() {
                // Sealed with the per-Envoy secret: only that Envoy process can open it.
                continue;
            }
            out.push(Candidate {
                carrier,
                scope: args.name.clone().unwrap_or_else(|| s.session_name.clone()),
                keys,
                bound_to,
                lifetimes: lifetimes.or(Some(s.lifetimes)),
            });
        }
    }
    if out.is_empty() {
        return Err(format!(
            "{name} has no policy whose tokens a key opens (no keys: each Envoy seals with a \
             secret of its own; a companion cookie also needs --id)"
        ));
    }
    Ok(out)
}

fn carrier_name(c: Carrier) -> &'static str {
    match c {
        Carrier::Cookie => "cookie",
        Carrier::Header => "header",
        Carrier::Companion => "companion cookie",
        Carrier::Envelope => "envelope",
    }
}

fn when(ms: u64) -> String {
    format!("{} ({ms} ms since 1970)", utc::format(ms))
}

/// The lines `open` prints, and whether the session is still live.
pub fn report(o: &Opened, now_ms: u64) -> (Vec<String>, bool) {
    let mut lines = vec![
        format!(
            "opens: {} token of {:?}, with key {} of {}",
            carrier_name(o.carrier),
            o.scope,
            o.key_index,
            o.key_count
        ),
        format!("endpoint: {}", o.pin.endpoint),
        format!(
            "cluster: {}",
            o.pin
                .cluster
                .as_deref()
                .unwrap_or("none (no upstream.cluster_header)")
        ),
    ];
    if !o.payload.is_empty() {
        lines.push(format!(
            "server's session id: {}",
            String::from_utf8_lossy(&o.payload)
        ));
    }
    lines.push(format!("issued: {}", when(o.pin.created_ms)));
    lines.push(format!("last seen: {}", when(o.pin.last_seen_ms)));
    let Some(lifetimes) = o.lifetimes else {
        lines.push(
            "expires: unknown (give --idle-timeout and --absolute-timeout, or --config)".into(),
        );
        return (lines, true);
    };
    let idle = lifetimes
        .idle_ms
        .map(|l| (o.pin.last_seen_ms.saturating_add(l), "idle_timeout"));
    let absolute = lifetimes
        .absolute_ms
        .map(|l| (o.pin.created_ms.saturating_add(l), "absolute_timeout"));
    let first = match (idle, absolute) {
        (Some(i), Some(a)) => Some(if a.0 < i.0 { a } else { i }),
        (i, a) => i.or(a),
    };
    match first {
        None => lines.push("expires: never (no idle_timeout nor absolute_timeout)".into()),
        Some((at, why)) => lines.push(format!("expires: {} by {why}", when(at))),
    }
    let live = !lifetimes.is_expired(&o.pin, now_ms);
    lines.push(if live {
        "state: live".to_string()
    } else {
        format!("state: expired (now is {})", utc::format(now_ms))
    });
    (lines, live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const K1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const K2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(argv: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("open").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    fn sealed(carrier: Carrier, scope: &str, key: u8, pin: &Pin, payload: &[u8]) -> String {
        Sealer::new(&[[key; 32]], carrier, scope)
            .seal_carrying(pin, payload, b"", &mut SystemEntropy)
            .unwrap()
    }

    fn pin(created_ms: u64) -> Pin {
        Pin {
            endpoint: "10.0.0.7:8080".into(),
            cluster: Some("app-canary".into()),
            created_ms,
            last_seen_ms: created_ms + 60_000,
        }
    }

    #[test]
    fn a_key_from_keygen_is_a_key_the_configuration_takes() {
        let key = new_key(&mut SystemEntropy).unwrap();
        let config = Config::parse(format!(r#"{{"keys": ["{key}"]}}"#).as_bytes()).unwrap();
        assert_eq!(config.default.keys.len(), 1);
        assert_ne!(new_key(&mut SystemEntropy), Some(key));
        struct Dry;
        impl Entropy for Dry {
            fn fill(&mut self, _: &mut [u8]) -> bool {
                false
            }
        }
        assert_eq!(new_key(&mut Dry), None);
    }

    #[test]
    fn a_cookie_token_opens_with_the_second_key_and_reports_its_pin() {
        let now = utc::now_ms();
        let t = sealed(Carrier::Cookie, "tether", 2, &pin(now), b"");
        let a = args(&[
            "--keys",
            K1,
            K2,
            &format!("tether={t}"),
            "--idle-timeout",
            "30m",
        ]);
        let (o, now) = open(&a).unwrap();
        assert_eq!((o.key_index, o.key_count), (2, 2));
        let (lines, live) = report(&o, now);
        assert!(live);
        assert_eq!(
            lines[0],
            "opens: cookie token of \"tether\", with key 2 of 2"
        );
        assert_eq!(lines[1], "endpoint: 10.0.0.7:8080");
        assert_eq!(lines[2], "cluster: app-canary");
        assert!(lines
            .iter()
            .any(|l| l.starts_with("expires: ") && l.ends_with("by idle_timeout")));
    }

    #[test]
    fn an_old_token_is_expired_and_says_by_which_timeout() {
        let t = sealed(
            Carrier::Header,
            "x-session",
            1,
            &pin(1_700_000_000_000),
            b"",
        );
        let a = args(&[
            "--keys",
            K1,
            "--absolute-timeout",
            "24h",
            &format!("X-Session: {t}"),
        ]);
        let (o, now) = open(&a).unwrap();
        let (lines, live) = report(&o, now);
        assert!(!live);
        assert!(lines.contains(
            &"expires: 2023-11-15 22:13:20 UTC (1700086400000 ms since 1970) by absolute_timeout"
                .to_string()
        ), "{lines:?}");
        assert!(lines.last().unwrap().starts_with("state: expired"));
    }

    #[test]
    fn an_envelope_shows_the_servers_id_and_a_config_gives_keys_and_timeouts() {
        let dir = std::env::temp_dir().join(format!("tether-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mcp.json");
        std::fs::write(
            &path,
            format!(
                r#"{{"type": "learn", "learn_from": "response_header",
                    "session_name": "mcp-session-id", "idle_timeout": "1h", "keys": ["{K1}"]}}"#
            ),
        )
        .unwrap();
        let now = utc::now_ms();
        let t = sealed(
            Carrier::Envelope,
            "mcp-session-id",
            1,
            &pin(now),
            b"server-id-42",
        );
        let a = args(&["--config", path.to_str().unwrap(), &t]);
        let (o, now) = open(&a).unwrap();
        let (lines, live) = report(&o, now);
        assert!(live);
        assert!(lines.contains(&"server's session id: server-id-42".to_string()));
        assert!(lines.iter().any(|l| l.ends_with("by idle_timeout")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn why_a_token_does_not_open() {
        let t = sealed(Carrier::Cookie, "tether", 3, &pin(0), b"");
        let e = open(&args(&["--keys", K1, &t])).unwrap_err();
        assert!(
            e.starts_with("no key opens it (tried cookie \"tether\""),
            "{e}"
        );
        let e = open(&args(&["--keys", K1, "--name", "other", &t])).unwrap_err();
        assert!(e.contains("cookie \"other\""), "{e}");
        let e = open(&args(&["--keys", K1, "tether=not*base64"])).unwrap_err();
        assert_eq!(e, "not a tether token: not unpadded base64url");
        let e = open(&args(&["--keys", "short", &t])).unwrap_err();
        assert!(e.contains("a key is base64 of 32 bytes"), "{e}");
        assert!(open(&args(&[&t])).is_err(), "no key at all");
    }

    #[test]
    fn a_companion_cookie_opens_beside_its_id() {
        let now = utc::now_ms();
        let t = Sealer::new(&[[1; 32]], Carrier::Companion, "JSESSIONID")
            .seal(&pin(now), b"abc.backend-1", &mut SystemEntropy)
            .unwrap();
        let cookie = format!("tether-JSESSIONID={t}");
        assert!(open(&args(&["--keys", K1, &cookie])).is_err());
        let (o, _) = open(&args(&["--keys", K1, "--id", "abc.backend-1", &cookie])).unwrap();
        assert_eq!(o.scope, "JSESSIONID");
    }

    #[test]
    fn tokens_are_taken_from_what_people_paste() {
        assert_eq!(split_token("  abc "), (None, "abc"));
        assert_eq!(split_token("tether=abc"), (Some("tether"), "abc"));
        assert_eq!(
            split_token("Set-Cookie: tether=abc; Path=/; HttpOnly"),
            (Some("tether"), "abc")
        );
        assert_eq!(split_token("cookie: sid=\"abc\""), (Some("sid"), "abc"));
        assert_eq!(
            split_token("Mcp-Session-Id: abc"),
            (Some("Mcp-Session-Id"), "abc")
        );
    }
}
