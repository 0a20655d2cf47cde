"""A fault-injecting HTTP proxy in front of the loopback S3 server: 503 SlowDown, dropped connections,
latency. Deterministic (every n-th request of a kind), so a test can count what it injected."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault</RequestId></Error>"
)


class FaultProxy:
    """Forwards to `upstream`; every `slowdown_every`-th request gets a 503 SlowDown, every
    `drop_every`-th GET of an object gets its connection cut half-way through the body, and every
    request waits `latency` seconds first. Counts are in `injected`."""

    def __init__(
        self,
        upstream: str,
        slowdown_every: int = 7,
        drop_every: int = 5,
        latency: float = 0.01,
        cut_ranged: range = range(0),
    ) -> None:
        """`cut_ranged`: the ordinals (from 1) of ranged object GETs whose connection is cut half-way through
        the body, whatever `drop_every` says (a run of them outlasts a client's own retries of one range)."""
        self.upstream = urlsplit(upstream)
        self.slowdown_every, self.drop_every, self.latency = slowdown_every, drop_every, latency
        self.cut_ranged = cut_ranged
        self.requests = 0
        self.gets = 0
        self.ranged: list[tuple[str, str, bool]] = []  # every ranged object GET: (path, Range header, cut)
        self.injected = {"slowdown": 0, "dropped": 0}
        self.faults: list[tuple[str, str, str]] = []  # (fault, method, path)
        self.lock = threading.Lock()
        self.enabled = True
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if self.latency:
            time.sleep(self.latency)
        with self.lock:
            self.requests += 1
            slowdown = self.enabled and self.requests % self.slowdown_every == 0
            is_object_get = h.command == "GET" and "?" not in h.path and h.path.count("/") >= 2
            if is_object_get and not slowdown:
                self.gets += 1
            drop = self.enabled and is_object_get and not slowdown and self.gets % self.drop_every == 0
            if is_object_get and not slowdown and h.headers.get("Range"):
                drop = drop or (self.enabled and len(self.ranged) + 1 in self.cut_ranged)
                self.ranged.append((h.path, h.headers["Range"], drop))
            if slowdown:
                self.injected["slowdown"] += 1
                self.faults.append(("slowdown", h.command, h.path))
            if drop:
                self.injected["dropped"] += 1
                self.faults.append(("dropped", h.command, h.path))
        if slowdown:
            h.send_response(503)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(SLOWDOWN)))
            h.end_headers()
            h.wfile.write(SLOWDOWN)
            return
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "connection")}
        headers["Host"] = self.upstream.netloc
        conn.request(h.command, h.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                h.send_header(k, v)
        # a HEAD answer carries the object's length, not its (empty) body's
        h.send_header(
            "Content-Length", resp.getheader("Content-Length", "0") if h.command == "HEAD" else str(len(data))
        )
        h.end_headers()
        if h.command == "HEAD":
            return
        if drop and len(data) > 16:
            h.wfile.write(data[: len(data) // 2])  # half the body, then the connection dies
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(data)
