#!/usr/bin/env python3
"""Demo backend for tether: answers every request with its own name.

GET /healthz answers 200 (Envoy's active health check). Every other request answers 200 with a
JSON body naming this backend and echoing the request's headers, and an `x-backend` header, so a
person (or a test) sees which endpoint served a request and what reached it.
A request to /login (or with the query parameter `login=NAME`) also starts an application session
the way a servlet container does: `Set-Cookie: JSESSIONID=<id>.<backend name>; Path=/` (a random id,
or NAME), for tether's `learn_from: cookie`. `--session-cookie` renames the cookie.

Query parameters to try what a real application does: `delay=SECONDS` holds the answer (a slow
endpoint, a long-poll; at most 120 s), `status=CODE` answers with that status, and
`set_cookie=VALUE` adds `Set-Cookie: VALUE` (URL-encoded; may be given more than once).
A WebSocket upgrade (`Upgrade: websocket`) is accepted: the backend sends a text message naming
itself and the Cookie header it received, then echoes every text message prefixed with its name.
Standard library only; HTTP/1.1 keep-alive.
"""
import argparse
import base64
import hashlib
import json
import secrets
import signal
import struct
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# RFC 6455's GUID for the Sec-WebSocket-Accept answer.
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_DELAY_S = 120.0
MAX_FRAME = 1 << 20


def login_id(path, name):
    """The application session id a request starts, or None (see the module's docstring)."""
    route, _, query = path.partition("?")
    login = urllib.parse.parse_qs(query).get("login")
    if login and login[0]:
        return f"{login[0]}.{name}"
    if route == "/login":
        return f"{secrets.token_hex(8)}.{name}"
    return None


def query(path):
    """The request's query parameters, each with every value given."""
    return urllib.parse.parse_qs(path.partition("?")[2])


def ws_frame(opcode, payload):
    """One unmasked, final WebSocket frame (servers do not mask)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def ws_read(rfile):
    """(opcode, payload) of the client's next frame, or None when the connection ends."""
    head = rfile.read(2)
    if len(head) < 2:
        return None
    opcode, n = head[0] & 0x0F, head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", rfile.read(8))[0]
    if n > MAX_FRAME:
        return None
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = rfile.read(n)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


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

        def _websocket(self):
            key = self.headers.get("sec-websocket-key", "").encode()
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
            self.send_response(101)
            self.send_header("upgrade", "websocket")
            self.send_header("connection", "Upgrade")
            self.send_header("sec-websocket-accept", accept)
            self.send_header("x-backend", name)
            self.end_headers()
            self.wfile.flush()
            hello = json.dumps({"backend": name, "cookie": self.headers.get("cookie")})
            self.wfile.write(ws_frame(0x1, hello.encode()))
            self.wfile.flush()
            while True:
                frame = ws_read(self.rfile)
                if frame is None or frame[0] == 0x8:
                    self.wfile.write(ws_frame(0x8, b""))
                    break
                opcode, payload = frame
                if opcode == 0x9:
                    self.wfile.write(ws_frame(0xA, payload))
                elif opcode == 0x1:
                    self.wfile.write(ws_frame(0x1, f"{name}: ".encode() + payload))
                self.wfile.flush()
            self.close_connection = True

        def _answer(self, with_body=True):
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            if self.headers.get("upgrade", "").lower() == "websocket":
                return self._websocket()
            params = query(self.path)
            delay = params.get("delay")
            if delay:
                try:
                    time.sleep(min(max(float(delay[0]), 0.0), MAX_DELAY_S))
                except ValueError:
                    pass
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
            status = 200
            if params.get("status", [""])[0].isdigit():
                status = min(max(int(params["status"][0]), 200), 599)
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.send_header("x-backend", name)
            session = None if self.path == "/healthz" else login_id(self.path, name)
            if session is not None:
                self.send_header("set-cookie", f"{session_cookie}={session}; Path=/")
            for value in params.get("set_cookie", []):
                self.send_header("set-cookie", value)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self):
            self._answer()

        def do_POST(self):
            self._answer()

        def do_PUT(self):
            self._answer()

        def do_DELETE(self):
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
