#!/usr/bin/python3
"""A small HTTP/1.1 server for spec/http_client_spec.lua, for what nginx cannot do on cue:
count connections and attempts, fail a given number of times, close mid-body, stream lines
split across chunks, hang until the client goes away and notice that it did.

Standard library only. Listens on 127.0.0.1 on a free port and prints "PORT <n>" first.
Every request with ?key=K is counted under K; GET /count?key=K reads the count.
"""
import json
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

lock = threading.Lock()
counts = {}    # key -> requests seen
attempts = {}  # key -> [monotonic time of each attempt]
closed = {}    # key -> True once the client went away
next_conn = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with lock:
            next_conn[0] += 1
            self.conn_id = next_conn[0]

    def log_message(self, fmt, *args):
        pass

    # ---- helpers ----

    def params(self):
        q = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        return {k: v[0] for k, v in q.items()}

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, body, ctype="text/plain", extra=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def chunk(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def start_chunked(self, ctype="text/plain"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def client_gone(self, wait):
        """True if the client closed its end within `wait` seconds."""
        readable, _, _ = select.select([self.connection], [], [], wait)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # ---- routes ----

    def route(self):
        path = urlsplit(self.path).path
        p = self.params()
        body = self.read_body()
        key = p.get("key")
        if key is not None and path not in ("/count", "/attempts", "/closed"):
            with lock:
                counts[key] = counts.get(key, 0) + 1
                attempts.setdefault(key, []).append(time.monotonic())

        if path == "/echo":
            self.reply(200, json.dumps({
                "method": self.command,
                "path": path,
                "target": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
                "conn": self.conn_id,
            }), "application/json")
        elif path == "/conn":
            self.reply(200, str(self.conn_id))
        elif path == "/count":
            with lock:
                self.reply(200, str(counts.get(key, 0)))
        elif path == "/attempts":
            with lock:
                self.reply(200, json.dumps(attempts.get(key, [])), "application/json")
        elif path == "/closed":
            with lock:
                self.reply(200, "yes" if closed.get(key) else "no")
        elif path == "/flaky":
            with lock:
                n = counts.get(key, 0)
            if n <= int(p.get("fail", "2")):
                extra = [("Retry-After", p["retry_after"])] if "retry_after" in p else []
                self.reply(int(p.get("status", "503")), "try again", extra=extra)
            else:
                self.reply(200, "ok after %d" % n)
        elif path == "/slow":
            time.sleep(float(p.get("delay", "1")))
            self.reply(200, "slow")
        elif path == "/hang":
            # answers nothing; notices when the client goes away
            deadline = time.monotonic() + float(p.get("for", "10"))
            while time.monotonic() < deadline:
                if self.client_gone(0.02):
                    with lock:
                        closed[key] = True
                    break
            self.close_connection = True
        elif path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 100)
            self.wfile.flush()
            self.close_connection = True
        elif path == "/lines":
            # lines split across chunks, a CRLF ending, and a last line without a newline
            self.start_chunked()
            for piece in ["alpha\nbe", "ta\ngam", "ma\r\n", "\n", "delta"]:
                self.chunk(piece)
                time.sleep(0.03)
            self.chunk(b"")
        elif path == "/forever":
            self.start_chunked()
            i = 0
            try:
                while True:
                    i += 1
                    self.chunk("tick %d\n" % i)
                    if self.client_gone(0.02):
                        raise BrokenPipeError
            except OSError:
                with lock:
                    closed[key] = True
                self.close_connection = True
        elif path == "/big":
            size = int(p.get("size", "1048576"))
            self.start_chunked("application/octet-stream")
            block = b"x" * 65536
            try:
                while size > 0:
                    self.chunk(block[:size])
                    size -= len(block)
                self.chunk(b"")
            except OSError:
                self.close_connection = True
        elif path == "/status":
            self.reply(int(p.get("code", "200")), p.get("body", ""))
        else:
            self.reply(404, "no route " + path)

    def do_GET(self):
        self.route()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


def main():
    server = Server(("127.0.0.1", 0), Handler)
    sys.stdout.write("PORT %d\n" % server.server_address[1])
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
