//! What happened to a request, classified once from what Envoy reports with the response; every
//! later decision reads the class, never raw statuses or Envoy's detail strings.

use crate::http::{status, Response};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An endpoint answered (any status): the response is its own.
    Served { endpoint: String, status: u16 },
    /// Envoy could not reach any endpoint: the connection to the last one tried failed or was
    /// refused, or the cluster had none to offer. Every try Envoy made failed that way.
    Unreachable { endpoint: Option<String> },
    /// Envoy answered itself although an endpoint was (or could be) reached: a timeout, a
    /// circuit breaker's overflow, a reset by the endpoint after the request went out, a local
    /// reply before routing. Says nothing against the endpoint.
    Local { details: String },
}

impl Outcome {
    /// Reads the response's class. Below 500 the status alone says an endpoint answered (Envoy's
    /// own replies once an endpoint is chosen are 5xx), so the costlier `response.code_details`
    /// property is asked only for a 5xx.
    pub fn classify(resp: &mut dyn Response) -> Outcome {
        let code = resp.first(":status").and_then(|v| status(&v)).unwrap_or(0);
        let upstream = resp.upstream();
        if (100..500).contains(&code) {
            if let Some(endpoint) = upstream {
                return Outcome::Served {
                    endpoint,
                    status: code,
                };
            }
        }
        let details = resp.code_details().unwrap_or_default();
        match upstream {
            Some(endpoint) if details == "via_upstream" => Outcome::Served {
                endpoint,
                status: code,
            },
            endpoint if unreachable(&details) => Outcome::Unreachable { endpoint },
            _ => Outcome::Local { details },
        }
    }
}

/// Envoy's details for "the endpoint could not be reached": a connection that failed (refused,
/// timed out connecting; `upstream_reset_before_response_started{remote_connection_failure|...}`)
/// and a cluster with no endpoint to offer.
fn unreachable(details: &str) -> bool {
    details == "no_healthy_upstream"
        || (details.starts_with("upstream_reset_before_response_started{")
            && (details.contains("connection_failure") || details.contains("connect_error")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeResponse;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const A: &str = "127.0.0.1:8081";

    fn classify(status: u16, upstream: Option<&str>, details: &str) -> (Outcome, usize) {
        let mut resp = FakeResponse::new(status, upstream).details(details);
        let outcome = Outcome::classify(&mut resp);
        (outcome, resp.details_reads.get())
    }

    #[test]
    fn an_endpoints_answer_below_500_costs_no_details_read() {
        for code in [200, 204, 302, 404, 499] {
            let (outcome, reads) = classify(code, Some(A), "via_upstream");
            assert_eq!(
                outcome,
                Outcome::Served {
                    endpoint: A.into(),
                    status: code
                }
            );
            assert_eq!(reads, 0, "{code}");
        }
    }

    #[test]
    fn a_5xx_is_the_endpoints_only_via_upstream() {
        assert_eq!(
            classify(503, Some(A), "via_upstream").0,
            Outcome::Served {
                endpoint: A.into(),
                status: 503
            }
        );
        assert_eq!(classify(503, Some(A), "via_upstream").1, 1);
    }

    /// The details Envoy 1.40 gave, measured (access log %RESPONSE_CODE_DETAILS%), for each way
    /// an endpoint is left.
    #[test]
    fn envoys_own_replies() {
        let unreachable = [
            "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
            "upstream_reset_before_response_started{connection_failure,delayed_connect_error:_111}",
            "upstream_reset_before_response_started{local_connection_failure}",
            "no_healthy_upstream",
        ];
        for details in unreachable {
            assert_eq!(
                classify(503, Some(A), details).0,
                Outcome::Unreachable {
                    endpoint: Some(A.into())
                },
                "{details}"
            );
        }
        assert_eq!(
            classify(503, None, "no_healthy_upstream").0,
            Outcome::Unreachable { endpoint: None }
        );
        let local = [
            "response_timeout",
            "upstream_per_try_timeout",
            "upstream_reset_before_response_started{connection_termination}",
            "upstream_reset_before_response_started{overflow}",
            "upstream_reset_before_response_started{remote_reset}",
            "upstream_reset_after_response_started{protocol_error}",
            "overflow",
            "maintenance_mode",
            "",
        ];
        for details in local {
            assert_eq!(
                classify(504, Some(A), details).0,
                Outcome::Local {
                    details: details.into()
                },
                "{details}"
            );
        }
        // No endpoint chosen at all (a route with none, a filter's own reply): Envoy's.
        assert!(matches!(
            classify(404, None, "route_not_found").0,
            Outcome::Local { .. }
        ));
    }
}
