"""A real browser keeps its session when it steps outside the cookie's path.

With `cookie.path` /app the browser sends the tether cookie only under /app, so every request
elsewhere (another page, the favicon Chromium fetches by itself) reaches tether without a session.
Answering one of them with a new `Set-Cookie: tether=...; Path=/app` would make the browser replace
the user's real session with it: the user would lose the session without ever leaving /app. Here
the cookie store and its path scoping are Chromium's own (Debian's package, driven by Playwright),
not the harness's hand-made jar.
"""
import os
import urllib.parse

import pytest
from playwright.sync_api import sync_playwright

from harness import COOKIE, HOST, SetCookie

CHROMIUM = "/usr/bin/chromium"
APP = "/app"
PLUGIN = {"cookie": {"path": APP}}
OUTSIDE = ("/other", "/favicon.ico")
REVISITS = 5
# Every launch, page load and wait in the test is bounded by this.
TIMEOUT_MS = 15_000
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # The test only ever sends the browser to 127.0.0.1: no proxy is asked, and any host name
    # one of the browser's own services might look up fails, so nothing leaves the machine.
    "--no-proxy-server",
    f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {HOST}",
]


def inside(path: str) -> bool:
    """Whether a browser sends a Path=/app cookie with a request for `path` (RFC 6265 5.1.4)."""
    return path == APP or path.startswith(APP + "/")


def tether_set_cookies(response) -> list[SetCookie]:
    # headers_array, not .headers: Playwright leaves cookie headers out of the latter.
    found = [SetCookie.parse(h["value"]) for h in response.headers_array()
             if h["name"].lower() == "set-cookie"]
    return [c for c in found if c.name == COOKIE]


def tether_sent(response) -> list[str]:
    """The tether cookie values in the request as the browser sent it (the backend cannot tell:
    tether removes its cookie from the request it forwards)."""
    header = response.request.header_value("cookie") or ""
    pairs = (c.strip().partition("=") for c in header.split(";"))
    return [value for name, _, value in pairs if name == COOKIE]


def tether_stored(context) -> list[dict]:
    return [c for c in context.cookies() if c["name"] == COOKIE]


@pytest.fixture
def browser():
    # A missing browser is a broken setup, not a reason to skip: `make e2e` installs it.
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: `make e2e` installs Debian's chromium package",
                    pytrace=False)
    with sync_playwright() as pw:
        # launch() gives Chromium a fresh temporary profile and deletes it on close.
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            yield b
        finally:
            b.close()


def test_requests_outside_the_cookie_path_leave_the_session_alone(make_stack, browser):
    stack = make_stack(PLUGIN)
    origin = f"http://{HOST}:{stack.port}"
    context = browser.new_context()
    try:
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        # Every response the browser got, its own requests included where Playwright reports them.
        responses = []
        context.on("response", lambda r: responses.append(r))
        page = context.new_page()
        # What each visit saw, for the failure messages.
        history = []

        def visit(path: str):
            # networkidle: the browser is given time to do what it does by itself after a page.
            r = page.goto(origin + path, wait_until="networkidle")
            assert r is not None and r.status == 200, f"{path}: {r and r.status}"
            # Playwright emits no response event for a favicon.ico, even one navigated to.
            if r not in responses:
                responses.append(r)
            backend = r.json()["backend"]
            assert backend == r.header_value("x-backend"), r.json()
            step = {"path": path, "backend": backend, "sent": tether_sent(r),
                    "set_cookie": [c.raw for c in tether_set_cookies(r)],
                    "stored": [c["value"] for c in tether_stored(context)]}
            history.append(step)
            return step

        first = visit(APP + "/page")
        issued = [SetCookie.parse(raw) for raw in first["set_cookie"]]
        assert len(issued) == 1 and issued[0].get("path") == APP, first
        stored = tether_stored(context)
        assert len(stored) == 1, stored
        session = stored[0]
        assert session["path"] == APP and session["httpOnly"], session
        # Chromium fetches /favicon.ico by itself after each page, a request Playwright does not
        # report: the session the browser keeps must still be the one /app/page issued.
        assert session["value"] == issued[0].value, history

        for path in OUTSIDE:
            # The browser's own scoping: outside /app it presents no session at all.
            assert visit(path)["sent"] == [], history

        for i in range(REVISITS):
            step = visit(f"{APP}/page?visit={i}")
            assert tether_stored(context) == [session], f"revisit {i}: {history}"
            assert step["sent"] == [session["value"]], f"revisit {i}: {history}"
            assert step["backend"] == first["backend"], f"revisit {i}: {history}"

        ours = [r for r in responses if r.url.startswith(origin + "/")]
        outside = [(urllib.parse.urlsplit(r.url).path, [c.raw for c in tether_set_cookies(r)])
                   for r in ours if not inside(urllib.parse.urlsplit(r.url).path)]
        # The check below covers at least the pages visited on purpose.
        assert set(OUTSIDE) <= {p for p, _ in outside}, [r.url for r in ours]
        assert [(p, c) for p, c in outside if c] == [], history
    finally:
        context.close()
