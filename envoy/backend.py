#!/usr/bin/env python3
"""Demo backend for tether: answers every request with its own name.

GET /healthz answers 200 (Envoy's active health check). Every other request answers 200 with a
JSON body naming this backend and echoing the request's headers, and an `x-backend` header, so a
person (or a test) sees which endpoint served a request and what reached it.
A request to /login (or with the query parameter `login=NAME`) also starts an application session
the way a servlet container does: `Set-Cookie: JSESSIONID=<id>.<backend name>; Path=/` (a random id,
or NAME), for tether's `learn_from: cookie`. `--session-cookie` renames the cookie.
Standard library only; HTTP/1.1 keep-alive.
"""
import argparse
import json
import secrets
import signal
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def login_id(path, name):
    """The application session id a request starts, or None (see the module's docstring)."""
    route, _, query = path.partition("?")
    login = urllib.parse.parse_qs(query).get("login")
    if login and login[0]:
        return f"{login[0]}.{name}"
    if route == "/login":
        return f"{secrets.token_hex(8)}.{name}"
    return None


def make_handler(name, session_cookie="JSESSIONID"):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "tether-demo-backend"
        # No Nagle: a response leaves at once instead of waiting for Envoy's delayed ACK (about
        # 40 ms a response on a kept-alive upstream connection).
        disable_nagle_algorithm = True
        # A buffered writer, flushed once per request: headers and body leave in one write, so a
        # backend killed between two requests never leaves a response cut after its headers
        # (a proxy cannot retry a response whose headers it has forwarded).
        wbufsize = 1 << 16

        def _answer(self, with_body=True):
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            if self.path == "/healthz":
                body = b"ok\n"
                ctype = "text/plain"
            else:
                headers = {}
                for key, value in self.headers.items():
                    headers.setdefault(key.lower(), []).append(value)
                body = (json.dumps({"backend": name, "path": self.path,
                                    "headers": headers}) + "\n").encode()
                ctype = "application/json"
            self.send_response(200)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.send_header("x-backend", name)
            session = None if self.path == "/healthz" else login_id(self.path, name)
            if session is not None:
                self.send_header("set-cookie", f"{session_cookie}={session}; Path=/")
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self):
            self._answer()

        def do_POST(self):
            self._answer()

        def do_HEAD(self):
            self._answer(with_body=False)

        def log_message(self, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--session-cookie", default="JSESSIONID",
                        help="name of the application session cookie /login sets")
    args = parser.parse_args()
    # Python's default listen backlog (5) overflows under a burst of new upstream connections.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer((args.address, args.port), make_handler(args.name, args.session_cookie))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{args.name} listening on {args.address}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
