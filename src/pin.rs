//! Where a session is pinned, and how long it may live.

use std::rc::Rc;

/// Where a session is pinned, and its times (wall-clock milliseconds since 1970, the same on
/// every Envoy of a fleet, so replicas agree on expiry). The names are shared, not copied: a
/// pin is handed from the cache of opened tokens to the request, the response and the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub endpoint: Rc<str>,
    /// The cluster that served the session first (with `upstream.cluster_header`).
    pub cluster: Option<Rc<str>>,
    pub created_ms: u64,
    pub last_seen_ms: u64,
}

impl Pin {
    /// A session starting now on `endpoint`.
    pub fn new(endpoint: &str, cluster: Option<&str>, now_ms: u64) -> Pin {
        Pin {
            endpoint: endpoint.into(),
            cluster: cluster.map(Into::into),
            created_ms: now_ms,
            last_seen_ms: now_ms,
        }
    }

    /// The same session, seen now.
    pub fn seen(&self, now_ms: u64) -> Pin {
        Pin {
            last_seen_ms: self.last_seen_ms.max(now_ms),
            ..self.clone()
        }
    }

    /// The same session, moved to `endpoint` (its start stays).
    pub fn moved(&self, endpoint: &str, cluster: Option<&str>, now_ms: u64) -> Pin {
        Pin {
            endpoint: endpoint.into(),
            cluster: cluster.map(Into::into),
            created_ms: self.created_ms,
            last_seen_ms: now_ms,
        }
    }
}

/// A session's lifetimes, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifetimes {
    pub absolute_ms: Option<u64>,
    pub idle_ms: Option<u64>,
}

impl Lifetimes {
    pub fn is_expired(&self, pin: &Pin, now_ms: u64) -> bool {
        let past = |since: u64, limit: Option<u64>| {
            limit.is_some_and(|limit| now_ms.saturating_sub(since) >= limit)
        };
        past(pin.created_ms, self.absolute_ms) || past(pin.last_seen_ms, self.idle_ms)
    }

    /// How often a session's last-seen time is written back (a token refreshed, a binding
    /// touched). Writing on every request would put a Set-Cookie, or a shared-data write and
    /// its CAS race, on every response. A quarter of the idle timeout (60 s at most) means a
    /// session may expire up to that much early, never late.
    pub fn touch_interval_ms(&self) -> Option<u64> {
        self.idle_ms.map(|idle| (idle / 4).min(60_000))
    }

    /// Whether `pin`'s last-seen time is due to be written back now.
    pub fn touch_due(&self, pin: &Pin, now_ms: u64, default_interval_ms: Option<u64>) -> bool {
        self.touch_interval_ms()
            .or(default_interval_ms)
            .is_some_and(|every| now_ms.saturating_sub(pin.last_seen_ms) >= every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn pin(created: u64, seen: u64) -> Pin {
        Pin {
            endpoint: "e".into(),
            cluster: None,
            created_ms: created,
            last_seen_ms: seen,
        }
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let lt = Lifetimes {
            absolute_ms: Some(10_000),
            idle_ms: Some(2_000),
        };
        assert!(!lt.is_expired(&pin(0, 0), 1_999));
        assert!(lt.is_expired(&pin(0, 0), 2_000), "idle");
        assert!(!lt.is_expired(&pin(0, 8_500), 9_999));
        assert!(lt.is_expired(&pin(0, 9_000), 10_000), "absolute");
        assert!(!Lifetimes::default().is_expired(&pin(0, 0), u64::MAX));
        // A clock that went back never expires a session.
        assert!(!lt.is_expired(&pin(5_000, 5_000), 1_000));
    }

    #[test]
    fn touch_interval_is_a_quarter_of_idle_at_most_a_minute() {
        let idle = |ms| Lifetimes {
            absolute_ms: None,
            idle_ms: Some(ms),
        };
        assert_eq!(Lifetimes::default().touch_interval_ms(), None);
        assert_eq!(idle(2_000).touch_interval_ms(), Some(500));
        assert_eq!(idle(40_000).touch_interval_ms(), Some(10_000));
        assert_eq!(idle(3_600_000).touch_interval_ms(), Some(60_000));
        assert!(idle(2_000).touch_due(&pin(0, 0), 500, None));
        assert!(!idle(2_000).touch_due(&pin(0, 0), 499, None));
        assert!(!Lifetimes::default().touch_due(&pin(0, 0), u64::MAX, None));
        assert!(Lifetimes::default().touch_due(&pin(0, 0), 5_000, Some(5_000)));
    }

    #[test]
    fn moved_keeps_the_start_and_seen_never_goes_back() {
        let p = pin(100, 200);
        let m = p.moved("f", Some("c"), 300);
        assert_eq!(
            (m.created_ms, m.last_seen_ms, &*m.endpoint),
            (100, 300, "f")
        );
        assert_eq!(p.seen(150).last_seen_ms, 200);
        assert_eq!(p.seen(250).last_seen_ms, 250);
    }
}
