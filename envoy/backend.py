#!/usr/bin/env python3
"""Demo backend for tether: answers every request with its own name.

GET /healthz answers 200 (Envoy's active health check). Every other request answers 200 with a
JSON body naming this backend and echoing the request's headers, and an `x-backend` header, so a
person (or a test) sees which endpoint served a request and what reached it.
Standard library only; HTTP/1.1 keep-alive.
"""
import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(name):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "tether-demo-backend"

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
    args = parser.parse_args()
    # Python's default listen backlog (5) overflows under a burst of new upstream connections.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer((args.address, args.port), make_handler(args.name))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{args.name} listening on {args.address}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
