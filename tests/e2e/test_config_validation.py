"""`envoy --mode validate` loads the module and runs its on_configure: bad plugin JSON is refused
with a log line naming the field, good JSON (every session type, keys, strict, routes) is not."""
import base64
import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness
from harness import SHIPPED, validate_plugin_config

def key(n=32):
    return base64.b64encode(os.urandom(n)).decode()


FULL = {
    "type": "cookie", "session_name": "tether",
    "keys": [key(), key()], "on_unavailable": "rebalance", "unavailable_status": 503,
    "retry_after": "5s",
    "cookie": {"path": "/", "domain": None, "secure": False, "http_only": True,
               "same_site": "lax", "lifetime_type": "session"},
    "absolute_timeout": "24h", "idle_timeout": "30m",
    "upstream": {"host_header": "x-tether-host", "cluster_header": "x-tether-cluster"},
    "routes": {
        "cart": {"session_name": "cart", "type": "header", "on_unavailable": "strict",
                 "unavailable_status": 429, "retry_after": "30s"},
        "legacy": {"type": "learn", "learn_from": "cookie", "session_name": "JSESSIONID",
                   "max_sessions": 5000},
        "edge": {"type": "source_ip", "trusted_hops": 2, "max_sessions": 100000},
        "search": {"type": "learn", "learn_from": "query", "session_name": "sid"},
        "api": {"disabled": True},
    },
}

SPEC_EXAMPLE = {
    "type": "cookie", "session_name": "tether",
    "cookie": {"path": "/", "domain": None, "secure": False, "http_only": True,
               "same_site": "lax", "lifetime_type": "session"},
    "absolute_timeout": "24h", "idle_timeout": "30m",
    "upstream": {"host_header": "x-tether-host"},
}

GOOD = {
    "shipped": SHIPPED,
    "spec-example": SPEC_EXAMPLE,
    "empty-object": "{}",
    "empty-string": "",
    "durations": {"idle_timeout": "500ms", "absolute_timeout": "1h30m"},
    "duration-seconds": {"idle_timeout": "10s"},
    "permanent": {"cookie": {"lifetime_type": "permanent"}, "absolute_timeout": "10s"},
    "same-site-strict": {"cookie": {"same_site": "strict"}},
    "full-example": FULL,
    "header": {"type": "header", "session_name": "X-Session"},
    "learn-cookie": {"type": "learn", "learn_from": "cookie", "session_name": "JSESSIONID"},
    "learn-header": {"type": "learn", "learn_from": "header", "session_name": "x-session-id"},
    "learn-query": {"type": "learn", "learn_from": "query", "session_name": "sid"},
    "source-ip": {"type": "source_ip"},
    "source-ip-hops": {"type": "source_ip", "trusted_hops": 16},
    "one-key": {"keys": [key()]},
    "urlsafe-key": {"keys": [base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode()]},
    "strict": {"on_unavailable": "strict", "unavailable_status": 503, "retry_after": "1m"},
    "status-bounds": {"unavailable_status": 200, "routes": {"r": {"unavailable_status": 599}}},
    "max-sessions": {"type": "learn", "learn_from": "header", "session_name": "x-s", "max_sessions": 1000},
    "routes-disabled-only": {"routes": {"api": {"disabled": True}}},
    "routes-empty": {"routes": {}},
}

# (config, the field a tether log line must name; None: no particular field)
BAD = {
    "not-json": ("{not json", None),
    "not-json-truncated": ('{"session_name": "tether"', None),
    "unknown-top-field": ({"session_nme": "x"}, "session_nme"),
    "unknown-cookie-field": ({"cookie": {"colour": "blue"}}, "colour"),
    "empty-session-name": ({"session_name": ""}, "session_name"),
    "duration-words": ({"idle_timeout": "10 minutes"}, "idle_timeout"),
    "duration-negative": ({"idle_timeout": "-1s"}, "idle_timeout"),
    "duration-zero": ({"idle_timeout": "0s"}, "idle_timeout"),
    "duration-days": ({"absolute_timeout": "1d"}, "absolute_timeout"),
    "permanent-without-absolute": ({"cookie": {"lifetime_type": "permanent"}}, "absolute_timeout"),
    "same-site-bogus": ({"cookie": {"same_site": "bogus"}}, "same_site"),
    "type-bogus": ({"type": "bogus"}, "type"),
    "secure-not-bool": ({"cookie": {"secure": "yes"}}, "secure"),
    "learn-from": ({"type": "learn", "learn_from": "x"}, "learn_from"),
    "hops-negative": ({"type": "source_ip", "trusted_hops": -1}, "trusted_hops"),
    "hops-17": ({"type": "source_ip", "trusted_hops": 17}, "trusted_hops"),
    "hops-string": ({"type": "source_ip", "trusted_hops": "1"}, "trusted_hops"),
    "hops-float": ({"type": "source_ip", "trusted_hops": 1.5}, "trusted_hops"),
    "keys-empty": ({"keys": []}, "keys"),
    "keys-not-base64": ({"keys": ["notbase64!"]}, "keys"),
    "keys-16-bytes": ({"keys": [key(16)]}, "keys"),
    "keys-33-bytes": ({"keys": [key(33)]}, "keys"),
    "keys-second-bad": ({"keys": [key(), "nope!"]}, "keys"),
    "keys-not-list": ({"keys": key()}, "keys"),
    "on-unavailable": ({"on_unavailable": "x"}, "on_unavailable"),
    "status-99": ({"unavailable_status": 99}, "unavailable_status"),
    "status-600": ({"unavailable_status": 600}, "unavailable_status"),
    "retry-after-no-unit": ({"retry_after": "5"}, "retry_after"),
    "max-sessions-0": ({"type": "learn", "max_sessions": 0}, "max_sessions"),
    "max-sessions-string": ({"type": "source_ip", "max_sessions": "10"}, "max_sessions"),
    "cluster-header-empty": ({"upstream": {"cluster_header": ""}}, "cluster_header"),
    "upstream-unknown": ({"upstream": {"hots_header": "x"}}, "hots_header"),
    "route-unknown-field": ({"routes": {"r": {"bogus": 1}}}, "routes.r"),
    "route-not-object": ({"routes": {"x": 5}}, "routes.x"),
    "route-bad-value": ({"routes": {"cart": {"type": "bogus"}}}, "routes.cart"),
    "route-disabled-not-bool": ({"routes": {"api": {"disabled": "yes"}}}, "routes.api"),
    "routes-not-object": ({"routes": ["cart"]}, "routes"),
    "full-example-one-bad-field": ({**FULL, "retry_after": "soon"}, "retry_after"),
    # A field the session type has no use for (issue #12).
    "hops-on-cookie": ({"trusted_hops": 1}, "trusted_hops"),
    "max-sessions-on-header": ({"type": "header", "max_sessions": 10}, "max_sessions"),
    "learn-from-on-source-ip": ({"type": "source_ip", "learn_from": "header"}, "learn_from"),
    "cookie-on-route-header": ({"routes": {"api": {"type": "header", "cookie": {"secure": True}}}},
                               "routes.api.cookie"),
    # Two policies sharing one binding table must agree on it (issue #12).
    "shared-table-differs": ({"type": "learn", "session_name": "J", "max_sessions": 1000,
                              "routes": {"b": {"max_sessions": 2000}}}, "routes.b.session_name"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every validation at once, in parallel."""
    work = tmp_path_factory.mktemp("validate")
    cases = {("good", k): v for k, v in GOOD.items()}
    cases.update({("bad", k): v[0] for k, v in BAD.items()})
    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = {key: pool.submit(validate_plugin_config, cfg, work) for key, cfg in cases.items()}
        return {key: f.result() for key, f in futures.items()}


def tether_lines(output: str) -> list[str]:
    """Lines the module logged."""
    return harness.module_lines(output)


def tail(output: str, n: int = 25) -> str:
    return "\n".join(output.splitlines()[-n:])


@pytest.mark.parametrize("name", list(GOOD))
def test_good_config_validates(results, name):
    code, output = results[("good", name)]
    assert code == 0, f"good config {name!r} refused (exit {code}):\n{tail(output)}"


@pytest.mark.parametrize("name", list(BAD))
def test_bad_config_refused(results, name):
    code, output = results[("bad", name)]
    field = BAD[name][1]
    assert code != 0, f"bad config {name!r} accepted:\n{tail(output)}"
    lines = tether_lines(output)
    assert lines, f"tether logged nothing about refused config {name!r}:\n{tail(output)}"
    if field is not None:
        naming = [l for l in lines if re.search(rf"\b{re.escape(field)}\b", l)]
        assert naming, (f"no tether log line names `{field}` for {name!r}; tether said:\n"
                        + "\n".join(lines[-10:]))
