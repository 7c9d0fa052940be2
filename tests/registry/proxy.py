"""A loopback HTTP proxy in front of a test registry that misbehaves on demand.

Modes (``proxy.mode``, changeable while it runs): ``pass`` (forwards as is), ``ignore_range``
(drops the Range header: the registry answers 200 with the whole blob), ``corrupt`` (flips the
byte ``corrupt_at`` of every 206 answer but the first ``spare`` of them: from the answer's start,
or from its end if negative; by default the first byte after a gzip member's header),
``stall`` (answers no Range request until the proxy stops), ``drop`` (closes the connection
of every Range request without an answer). ``delay`` (seconds before each answer) and ``rate``
(bytes a second) slow every answer down. Every request is counted in ``requests`` as (method,
path, Range header or None, status).
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te",
               "upgrade", "trailer"}


class MisbehavingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.spare = 0  # 206 answers the corrupt mode passes unchanged before it corrupts
        self.corrupt_at = 10  # the byte it flips (negative: from the end)
        self.delay = 0.0
        self.rate: float | None = None
        self.requests: list[tuple[str, str, str | None, int]] = []
        self.bytes_sent = 0
        self._stop = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # As a registry's server (Go's net/http sets TCP_NODELAY): with Nagle on, an
            # answer's last partial segment waits for the client's delayed ACK of the
            # headers (40 ms) on every request of a kept-alive connection.
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_HEAD(self) -> None:
                proxy._forward(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ref(self, name: str) -> str:
        return f"{self.host}/{name}"

    def __enter__(self) -> MisbehavingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def range_requests(self) -> list[tuple[str, str, str | None, int]]:
        return [r for r in self.requests if r[2] is not None]

    def _forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        wanted_range = handler.headers.get("Range")
        headers = [(k, v) for k, v in handler.headers.items()  # repeated ones (Accept) too
                   if k.lower() not in HOP_HEADERS and k.lower() != "host"]
        if wanted_range is not None:
            if self.mode == "stall":
                self._stop.wait(120)
                handler.close_connection = True
                return
            if self.mode == "drop":
                self.requests.append((handler.command, handler.path, wanted_range, 0))
                handler.close_connection = True
                return
            if self.mode == "ignore_range":
                headers = [(k, v) for k, v in headers if k.lower() != "range"]
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            upstream.putrequest(handler.command, handler.path, skip_accept_encoding=True)
            for key, value in headers:
                upstream.putheader(key, value)
            upstream.endheaders()
            answer = upstream.getresponse()
            body = answer.read()
        finally:
            upstream.close()
        if answer.status == 206 and self.mode == "corrupt" and body and self.spare > 0:
            self.spare -= 1
        elif answer.status == 206 and self.mode == "corrupt" and body:
            at = min(len(body) - 1, self.corrupt_at) if self.corrupt_at >= 0 \
                else max(0, len(body) + self.corrupt_at)
            body = body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1:]
        self.requests.append((handler.command, handler.path, wanted_range, answer.status))
        if self.delay:
            time.sleep(self.delay)
        handler.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command == "HEAD":
            return
        self._send(handler, body)

    def _send(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        step = 64 << 10
        for start in range(0, len(body), step):
            piece = body[start:start + step]
            try:
                handler.wfile.write(piece)
            except OSError:
                return
            self.bytes_sent += len(piece)
            if self.rate:
                time.sleep(len(piece) / self.rate)
