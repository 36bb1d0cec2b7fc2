//! The compiled plugin: one policy per route (or the top level's), the headers tether owns on
//! every route, and the two entry points the adapter calls per request.

use crate::config::{Config, ConfigError, ReadSecret, SessionType, STRICT_HEADER};
use crate::entropy::Entropy;
use crate::http::{HeaderOp, Request, Response};
pub use crate::policy::Hold;
use crate::policy::{Decision, Policy, PolicyState, ResponseAction};
use crate::secret::{process_secret, Key};
use crate::table::{BindingTable, Store, WriteReport};
use log::{error, info, warn};

pub struct Plugin {
    policies: Vec<Policy>,
    /// Route name → index into `policies`, `None`: tether is disabled on that route.
    routes: Vec<(String, Option<usize>)>,
    /// Headers no client may send: every policy's host and cluster header, and the strict
    /// marker. Removed on every route, disabled ones too.
    owned_headers: Vec<String>,
}

/// What the request phase decided, carried to the response phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub policy: usize,
    pub state: PolicyState,
}

/// The request phase's answer: the request's header changes, in order, and what the response
/// phase needs (`None`: tether has nothing to do on this request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPlan<'a> {
    pub ops: Vec<HeaderOp<'a>>,
    /// Client-sent copies of owned headers that were removed.
    pub forged_headers: usize,
    pub stream: Option<Stream>,
}

/// A configuration ready to serve: parsed, with the process secret and the plugin it compiles
/// to, its binding tables created.
pub struct Started {
    pub config: Config,
    pub secret: Key,
    pub plugin: Plugin,
}

/// Where the keys of a policy with `keys_secret` come from.
pub enum Secrets<'a> {
    /// Envoy's generic secret of that name, as the adapter reads it (the native build).
    Envoy(&'a mut ReadSecret<'a>),
    /// This host cannot read Envoy's secrets: a configuration naming one is refused, why.
    Unavailable(&'static str),
    /// Not read here (the `tether` command, which has no Envoy to ask): the keys stay empty.
    Unread,
}

/// What both adapters do with the configuration Envoy hands them, once, on the main thread
/// before any traffic (see `BindingTable::prepare`). `None` when it cannot serve: the reason is
/// logged as one line and Envoy refuses the configuration. A table that could not be created
/// is only warned about: its buckets are created again by the first request that needs them.
pub fn start(
    bytes: &[u8],
    store: &dyn Store,
    entropy: &mut dyn Entropy,
    secrets: Secrets<'_>,
) -> Option<Started> {
    let parsed = Config::parse(bytes).and_then(|mut config| {
        match secrets {
            Secrets::Envoy(read) => config.resolve_keys(read)?,
            Secrets::Unavailable(why) => {
                if let Some(field) = config.keys_secret_field() {
                    return Err(ConfigError {
                        field,
                        problem: why.to_string(),
                    });
                }
            }
            Secrets::Unread => {}
        }
        Ok(config)
    });
    let config = match parsed {
        Ok(c) => c,
        Err(e) => {
            error!("tether: invalid plugin configuration: {e}");
            return None;
        }
    };
    let secret = match process_secret(store, entropy) {
        Ok(secret) => secret,
        Err(e) => {
            error!("tether: no per-Envoy secret ({e:?}): cannot seal or hash sessions");
            return None;
        }
    };
    let plugin = Plugin::new(&config, &secret);
    for table in plugin.tables() {
        match table.prepare(store) {
            Ok(created) if created > 0 => info!(
                "tether: binding table ready ({} buckets, {created} created)",
                table.bucket_count()
            ),
            Ok(_) => {}
            Err(e) => warn!("tether: could not create the binding table: {e:?}"),
        }
    }
    Some(Started {
        config,
        secret,
        plugin,
    })
}

impl Plugin {
    pub fn new(config: &Config, process_secret: &Key) -> Plugin {
        let mut policies = vec![Policy::new(&config.default, process_secret)];
        let mut routes = Vec::new();
        for (name, settings) in &config.routes {
            let index = settings.as_ref().map(|s| {
                policies.push(Policy::new(s, process_secret));
                policies.len() - 1
            });
            routes.push((name.clone(), index));
        }
        let mut owned_headers = vec![STRICT_HEADER.to_string()];
        for p in &policies {
            let r = p.routing();
            for h in std::iter::once(&r.host_header).chain(r.cluster_header.as_ref()) {
                if !owned_headers.contains(h) {
                    owned_headers.push(h.clone());
                }
            }
        }
        Plugin {
            policies,
            routes,
            owned_headers,
        }
    }

    /// Whether the policy depends on the route (the adapter then reads the route's name, a
    /// property read that costs).
    pub fn needs_route_name(&self) -> bool {
        !self.routes.is_empty()
    }

    pub fn owned_headers(&self) -> &[String] {
        &self.owned_headers
    }

    /// The policy for a request on `route` (`None`: tether is disabled there). Routes the
    /// configuration does not name use the top level's.
    pub fn policy_for(&self, route: Option<&str>) -> Option<usize> {
        match route.and_then(|r| self.routes.iter().find(|(name, _)| name == r)) {
            Some((_, index)) => *index,
            None => Some(0),
        }
    }

    pub fn policy(&self, index: usize) -> Option<&Policy> {
        self.policies.get(index)
    }

    /// Every binding table the policies keep (several policies may name the same one).
    pub fn tables(&self) -> impl Iterator<Item = &BindingTable> {
        self.policies.iter().filter_map(Policy::table)
    }

    pub fn on_request(
        &self,
        route: Option<&str>,
        req: &mut dyn Request,
        store: &dyn Store,
        now_ms: u64,
    ) -> RequestPlan<'_> {
        // The policy reads first: when it needed the whole header map, the owned headers below
        // are looked up in it at no cost.
        let mut edits = Vec::new();
        let stream = self
            .policy_for(route)
            .and_then(|i| Some((i, self.policies.get(i)?)))
            .map(|(index, policy)| {
                let (state, policy_edits) = policy.on_request(req, store, now_ms);
                edits = policy_edits;
                Stream {
                    policy: index,
                    state,
                }
            });
        // Whatever the client sent under tether's routing headers must never choose the
        // endpoint or the cluster, on any route; removed before tether sets its own.
        let mut ops: Vec<HeaderOp> = self
            .owned_headers
            .iter()
            .filter(|h| req.first(h).is_some())
            .map(|h| HeaderOp::remove(h.as_str()))
            .collect();
        let forged_headers = ops.len();
        if ops.is_empty() {
            ops = edits;
        } else {
            ops.append(&mut edits);
        }
        RequestPlan {
            ops,
            forged_headers,
            stream,
        }
    }

    pub fn on_response(
        &self,
        stream: &Stream,
        resp: &mut dyn Response,
        store: &dyn Store,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction<'_> {
        match self.policies.get(stream.policy) {
            Some(policy) => policy.on_response(&stream.state, resp, store, now_ms, entropy),
            None => ResponseAction::new(Decision::Unserved {
                details: "no_policy".into(),
            }),
        }
    }

    /// The session type of a stream's policy.
    pub fn session_type(&self, stream: &Stream) -> Option<SessionType> {
        self.policies.get(stream.policy).map(Policy::session_type)
    }

    /// Whether a stream's unknown value is a token that did not open (for the metrics of its
    /// request phase).
    pub fn seals_its_sessions(&self, stream: &Stream) -> bool {
        self.policies
            .get(stream.policy)
            .is_some_and(Policy::seals_its_sessions)
    }

    /// Whether the end of this stream matters (see `Policy::watches_stream_end`).
    pub fn watches_stream_end(&self, stream: &Stream) -> bool {
        self.policies
            .get(stream.policy)
            .is_some_and(Policy::watches_stream_end)
    }

    /// What keeps the session of this stream fresh while it stays open, for the adapter's
    /// timer (`None`: its end does not matter, or there is no record to touch).
    pub fn hold(&self, stream: &Stream, now_ms: u64) -> Option<Hold> {
        self.policies
            .get(stream.policy)
            .filter(|p| p.watches_stream_end())
            .and_then(|p| p.hold(&stream.state, now_ms))
    }

    /// The end of a request's stream; what it wrote.
    pub fn on_stream_end(&self, stream: &Stream, store: &dyn Store, now_ms: u64) -> WriteReport {
        self.policies
            .get(stream.policy)
            .map_or_else(WriteReport::default, |p| {
                p.on_stream_end(&stream.state, store, now_ms)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::SystemEntropy;
    use crate::testing::FakeStore;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_started_configuration_has_its_tables_created_and_one_secret_for_the_process() {
        let store = FakeStore::default();
        let json = br#"{"type": "learn", "learn_from": "header", "session_name": "x-id", "max_sessions": 64}"#;
        let first = start(json, &store, &mut SystemEntropy, Secrets::Unread).map(|s| s.secret);
        let keys = store.data.borrow().len();
        // 64 sessions are 8 buckets of 8, and one key holds the process secret.
        assert_eq!(keys, 8 + 1);
        let again = start(json, &store, &mut SystemEntropy, Secrets::Unread).map(|s| s.secret);
        assert!(first.is_some());
        assert_eq!(
            first, again,
            "a second configuration must share the process secret"
        );
        assert_eq!(store.data.borrow().len(), keys);
    }

    #[test]
    fn a_host_without_envoys_secrets_refuses_keys_secret_naming_the_field() {
        let store = FakeStore::default();
        let json = br#"{"routes": {"r": {"keys_secret": "k"}}}"#;
        let why = "Envoy's secrets reach only the native build";
        assert!(start(json, &store, &mut SystemEntropy, Secrets::Unavailable(why)).is_none());
        let unread = start(json, &store, &mut SystemEntropy, Secrets::Unread).unwrap();
        assert!(unread.config.policies().all(|(_, s)| s.keys.is_empty()));
        let key = crate::encoding::base64url_encode(&[9u8; 32]);
        let mut read = |_: &crate::config::KeysSecret| Ok(Some(key.clone().into_bytes()));
        let envoy = start(json, &store, &mut SystemEntropy, Secrets::Envoy(&mut read)).unwrap();
        let keys: Vec<usize> = envoy.config.policies().map(|(_, s)| s.keys.len()).collect();
        assert_eq!(keys, [0, 1]);
    }

    #[test]
    fn a_configuration_that_cannot_serve_is_refused() {
        let store = FakeStore::default();
        assert!(start(
            br#"{"type": "cookie", "max_sessions": "many"}"#,
            &store,
            &mut SystemEntropy,
            Secrets::Unread
        )
        .is_none());
        assert!(start(b"not json", &store, &mut SystemEntropy, Secrets::Unread).is_none());
        struct Dry;
        impl Entropy for Dry {
            fn fill(&mut self, _: &mut [u8]) -> bool {
                false
            }
        }
        assert!(start(br#"{"type": "cookie"}"#, &store, &mut Dry, Secrets::Unread).is_none());
    }
}
