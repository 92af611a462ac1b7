#!/usr/bin/env python3
"""A webhook receiver that fences zkrun leaders (docs/egress.md).

    python3 examples/fencing-receiver.py [PORT]     (default 8080, on 127.0.0.1)

Every request a zkrun plugin sends carries `zkrun-term` (the leader's
fencing token) and `zkrun-election` (its election path). Terms are
ZooKeeper zxids: they increase across the whole ensemble, so one job's
terms say nothing about another's. The receiver therefore keeps the highest
term seen *per election* and refuses (409) a request whose term is lower
than that: it comes from a deposed leader. Equal terms are the same
leader, so its retries are fine.

Bodies are read whole, whether sent with Content-Length or with
`Transfer-Encoding: chunked` (as Rust's wstd client sends them). Each
accepted request is printed as one JSON line on stdout; replace `apply`
with the job's effect, and keep `highest` in the service's database to
survive restarts.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

highest = {}  # election -> highest term seen; keep it durable in a real service
lock = threading.Lock()


def apply(election, term, body):
    """The job's effect: here, one JSON line per accepted request."""
    line = {"election": election, "term": term, "body": body.decode("utf-8", "replace")}
    print(json.dumps(line), flush=True)


class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def read_body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while self.rfile.readline().strip():
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()  # the CRLF after each chunk
        return self.rfile.read(int(self.headers.get("content-length", 0)))

    def answer(self, code, text):
        data = text.encode()
        self.send_response(code)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.read_body()
        election = self.headers.get("zkrun-election")
        term = self.headers.get("zkrun-term")
        if election is None or term is None or not term.isdigit():
            self.answer(400, "zkrun-election and zkrun-term are required\n")
            return
        term = int(term)
        with lock:  # check and apply under one lock (or one transaction)
            if term < highest.get(election, 0):
                self.answer(409, f"term {term} is older than {highest[election]}\n")
                return
            highest[election] = term
            apply(election, term, body)
        self.answer(200, "ok\n")

    def log_message(self, format, *args):
        pass  # stdout carries only accepted requests


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    server = ThreadingHTTPServer(("127.0.0.1", port), Hook)
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.serve_forever()
