"""`envoy --mode validate` loads the module and runs its on_configure: bad plugin JSON is refused."""
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import SHIPPED, validate_plugin_config

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
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every validation at once, in parallel."""
    work = tmp_path_factory.mktemp("validate")
    cases = {("good", k): v for k, v in GOOD.items()}
    cases.update({("bad", k): v[0] for k, v in BAD.items()})
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {key: pool.submit(validate_plugin_config, cfg, work) for key, cfg in cases.items()}
        return {key: f.result() for key, f in futures.items()}


def tether_lines(output: str) -> list[str]:
    """Lines the module logged (Envoy prefixes them with `wasm log`)."""
    return [line for line in output.splitlines() if "wasm log" in line]


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
