//! Token sessions (`cookie`, `header`): the session is a sealed pin the client carries.

use super::{
    cluster_of, pin_ops, refusal, verdict, Decision, Found, Miss, ResponseAction, Verdict,
};
use crate::config::{CookieSettings, Kind, LifetimeType, Routing, SessionType, Settings};
use crate::cookies;
use crate::entropy::Entropy;
use crate::http::{self, HeaderOp, Request, Response};
use crate::outcome::Outcome;
use crate::pin::{Lifetimes, Pin};
use crate::seal::{Carrier, Sealer};
use crate::secret::Key;

/// Where the token travels.
enum TokenCarrier {
    /// The cookie `name`, issued with these attributes, read only on requests within its path.
    Cookie {
        name: String,
        attributes: CookieSettings,
    },
    /// The header `name` (lower case), in requests and responses.
    Header { name: String },
}

pub struct TokenSessions {
    session_name: String,
    carrier: TokenCarrier,
    sealer: Sealer,
    lifetimes: Lifetimes,
    routing: Routing,
}

/// What the request phase found, for the response phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenState {
    pub found: Found,
}

impl TokenSessions {
    /// `None` for the session types that are not token sessions.
    pub fn new(settings: &Settings, process_secret: &Key) -> Option<TokenSessions> {
        let (carrier, kind) = match &settings.kind {
            Kind::Cookie(attributes) => (
                TokenCarrier::Cookie {
                    name: settings.session_name.clone(),
                    attributes: attributes.clone(),
                },
                Carrier::Cookie,
            ),
            Kind::Header { header } => (
                TokenCarrier::Header {
                    name: header.clone(),
                },
                Carrier::Header,
            ),
            Kind::Learn { .. } | Kind::SourceIp { .. } => return None,
        };
        let keys = if settings.keys.is_empty() {
            vec![*process_secret]
        } else {
            settings.keys.clone()
        };
        Some(TokenSessions {
            session_name: settings.session_name.clone(),
            sealer: Sealer::new(&keys, kind, &settings.session_name),
            carrier,
            lifetimes: settings.lifetimes,
            routing: settings.routing.clone(),
        })
    }

    pub fn session_type(&self) -> SessionType {
        match self.carrier {
            TokenCarrier::Cookie { .. } => SessionType::Cookie,
            TokenCarrier::Header { .. } => SessionType::Header,
        }
    }

    pub fn session_name(&self) -> &str {
        &self.session_name
    }

    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    pub fn on_request(
        &self,
        req: &mut dyn Request,
        now_ms: u64,
    ) -> (TokenState, Vec<HeaderOp<'_>>) {
        let mut ops = Vec::with_capacity(4);
        let found = match &self.carrier {
            TokenCarrier::Cookie { name, attributes } => {
                if !within_path(req, &attributes.path) {
                    Found::OutsidePath
                } else {
                    // Every field at once: a browser's request carries cookies of the site's
                    // other applications, and all of them are needed to strip tether's.
                    let fields = req.all("cookie");
                    let (tokens, rest) = cookies::take(&fields, name);
                    // The backend has no use for tether's cookie; it leaves with it, from every
                    // field it was in, and every other cookie passes on.
                    if let Some(rest) = rest {
                        ops.push(cookie_header_op(rest));
                    }
                    if tokens.is_empty() {
                        Found::New(Miss::NoToken)
                    } else {
                        self.open_first(&tokens, now_ms)
                    }
                }
            }
            TokenCarrier::Header { name } => match req.first(name) {
                None => Found::New(Miss::NoToken),
                Some(value) => {
                    ops.push(HeaderOp::remove(name));
                    self.open_first(&[value.trim_ascii()], now_ms)
                }
            },
        };
        if let Found::Pinned(pin) = &found {
            pin_ops(&self.routing, pin, &mut ops);
        }
        (TokenState { found }, ops)
    }

    fn open_first(&self, tokens: &[&[u8]], now_ms: u64) -> Found {
        let mut miss = Miss::Unknown;
        for token in tokens.iter().take(cookies::MAX_CANDIDATES) {
            if let Some(pin) = self.sealer.open(token, b"") {
                if self.lifetimes.is_expired(&pin, now_ms) {
                    miss = Miss::Expired;
                } else {
                    return Found::Pinned(pin);
                }
            }
        }
        Found::New(miss)
    }

    pub fn on_response(
        &self,
        state: &TokenState,
        resp: &mut dyn Response,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction<'_> {
        let (guard_ops, removed) = self.guard_name(resp);
        let action = match &state.found {
            Found::OutsidePath => ResponseAction::new(Decision::OutsidePath),
            Found::New(miss) => match Outcome::classify(resp) {
                Outcome::Served { endpoint, .. } => {
                    let pin = Pin::new(
                        &endpoint,
                        cluster_of(&self.routing, resp).as_deref(),
                        now_ms,
                    );
                    self.issue(
                        &pin,
                        now_ms,
                        Decision::Issued {
                            endpoint: pin.endpoint.clone(),
                            miss: *miss,
                        },
                        entropy,
                    )
                }
                Outcome::Unreachable { .. } => ResponseAction::new(Decision::Unserved {
                    details: "unreachable".into(),
                }),
                Outcome::Local { details } => ResponseAction::new(Decision::Unserved { details }),
            },
            Found::Pinned(pin) => self.pinned(pin, resp, now_ms, entropy),
        };
        action.after_guard(guard_ops, removed)
    }

    fn pinned(
        &self,
        pin: &Pin,
        resp: &mut dyn Response,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction<'_> {
        let outcome = Outcome::classify(resp);
        match verdict(pin, &outcome, &self.routing) {
            Verdict::Hit => {
                let refreshed = self.lifetimes.touch_due(pin, now_ms, None);
                let decision = Decision::Hit {
                    endpoint: pin.endpoint.clone(),
                    refreshed,
                };
                if refreshed {
                    self.issue(&pin.seen(now_ms), now_ms, decision, entropy)
                } else {
                    ResponseAction::new(decision)
                }
            }
            Verdict::Moved { to } => {
                let moved = pin.moved(to, cluster_of(&self.routing, resp).as_deref(), now_ms);
                let decision = Decision::Rebound {
                    from: pin.endpoint.clone(),
                    to: moved.endpoint.clone(),
                };
                self.issue(&moved, now_ms, decision, entropy)
            }
            Verdict::Refuse => refusal(&self.routing, &pin.endpoint),
            Verdict::LetGo => {
                // Every try failed (a whole cluster of a canary is down, say): the client
                // forgets the session, and its next request is load-balanced afresh instead of
                // failing until the session expires.
                let mut action = ResponseAction::new(Decision::Dropped {
                    endpoint: pin.endpoint.clone(),
                });
                action.ops.push(match &self.carrier {
                    TokenCarrier::Cookie { name, attributes } => {
                        HeaderOp::add("set-cookie", cookies::expired(name, attributes))
                    }
                    TokenCarrier::Header { name } => HeaderOp::set(name, Vec::new()),
                });
                action
            }
            Verdict::Kept { details } => ResponseAction::new(Decision::Kept {
                endpoint: pin.endpoint.clone(),
                details: details.to_string(),
            }),
        }
    }

    /// Hands the client a token for `pin`.
    fn issue(
        &self,
        pin: &Pin,
        now_ms: u64,
        decision: Decision,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction<'_> {
        let token = match self.sealer.seal(pin, b"", entropy) {
            Ok(token) => token,
            Err(e) => return ResponseAction::new(Decision::SealFailed(e)),
        };
        let mut action = ResponseAction::new(decision);
        action.ops.push(match &self.carrier {
            TokenCarrier::Cookie { name, attributes } => HeaderOp::add(
                "set-cookie",
                cookies::set_cookie(
                    name,
                    &token,
                    attributes,
                    max_age_s(attributes, self.lifetimes, pin, now_ms),
                ),
            ),
            TokenCarrier::Header { name } => HeaderOp::set(name, token),
        });
        action
    }

    /// tether owns its cookie's (or header's) name: a backend's `Set-Cookie` of that name, or
    /// header of that name, would replace the client's session, and is removed.
    fn guard_name(&self, resp: &mut dyn Response) -> (Vec<HeaderOp<'_>>, usize) {
        match &self.carrier {
            TokenCarrier::Cookie { name, .. } => guard_set_cookies(resp, &[name]),
            TokenCarrier::Header { name } => match resp.first(name) {
                None => (Vec::new(), 0),
                Some(_) => (vec![HeaderOp::remove(name)], resp.all(name).len()),
            },
        }
    }
}

/// Removes the response's `Set-Cookie` headers that set one of `names`, keeping every other
/// one in order: the header is removed and the others added back. Returns the operations and
/// how many were removed.
pub(crate) fn guard_set_cookies(
    resp: &mut dyn Response,
    names: &[&str],
) -> (Vec<HeaderOp<'static>>, usize) {
    if resp.first("set-cookie").is_none() {
        return (Vec::new(), 0);
    }
    let ours = |v: &[u8]| {
        cookies::set_cookie_name(v).is_some_and(|n| names.iter().any(|name| name.as_bytes() == n))
    };
    let all = resp.all("set-cookie");
    let removed = all.iter().filter(|v| ours(v)).count();
    if removed == 0 {
        return (Vec::new(), 0);
    }
    let mut ops = vec![HeaderOp::remove("set-cookie")];
    ops.extend(
        all.into_iter()
            .filter(|v| !ours(v))
            .map(|v| HeaderOp::add("set-cookie", v.to_vec())),
    );
    (ops, removed)
}

/// Whether the request is within a cookie's path; a root path takes no header read.
pub(crate) fn within_path(req: &mut dyn Request, cookie_path: &str) -> bool {
    cookie_path == "/"
        || req
            .first(":path")
            .is_some_and(|full| cookies::path_matches(http::path(&full), cookie_path))
}

/// The request's `Cookie` header with tether's cookies taken out (removed when none is left).
pub(crate) fn cookie_header_op(rest: Vec<u8>) -> HeaderOp<'static> {
    if rest.is_empty() {
        HeaderOp::remove("cookie")
    } else {
        HeaderOp::Set("cookie", rest)
    }
}

/// A permanent cookie's `Max-Age`: what is left of `absolute_timeout`.
pub(crate) fn max_age_s(
    attributes: &CookieSettings,
    lifetimes: Lifetimes,
    pin: &Pin,
    now_ms: u64,
) -> Option<u64> {
    match (attributes.lifetime_type, lifetimes.absolute_ms) {
        (LifetimeType::Permanent, Some(limit)) => Some(
            pin.created_ms
                .saturating_add(limit)
                .saturating_sub(now_ms)
                .div_ceil(1000),
        ),
        _ => None,
    }
}
