"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3 endpoint, for resilience tests.

Clients use the proxy's address as their S3 endpoint (``AWS_ENDPOINT_URL``). Each request is either
forwarded to the real endpoint, answered ``503 SlowDown`` (S3's throttling reply, which clients must
retry), or dropped: the connection closes without an answer. Which happens is drawn from a seeded
generator, so a run is repeatable up to the order in which concurrent requests arrive. With
``conditional_put_status`` set, a PUT with ``If-None-Match`` is answered with that status instead of
forwarded: 501 for an S3-compatible store without conditional writes, 400 for one that rejects the
header, 409 for AWS's concurrent-conditional-write conflict. With ``deny`` set (a regular expression),
a request whose ``"METHOD path body"`` matches it is answered ``403 AccessDenied``, as a bucket policy
would: ``deny="Npix="`` refuses any request naming a part file, a batch delete of them included::

    with LocalS3() as s3, FaultyProxy(s3.endpoint_url, p_503=0.1, p_drop=0.05, seed=0) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
"""

from __future__ import annotations

import http.client
import random
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from skymorph.errors import InputError

__all__ = ["FaultyProxy", "FaultCounts"]

_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_CONDITIONAL_PUT_ERRORS = {
    501: ("Not Implemented", "NotImplemented", "A header you provided implies functionality that is not implemented."),
    400: ("Bad Request", "InvalidArgument", "If-None-Match is not supported."),
    409: ("Conflict", "ConditionalRequestConflict", "A conflicting conditional operation is in progress."),
}
_ACCESS_DENIED = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


@dataclass
class FaultCounts:
    """How many requests the proxy forwarded, answered 503, dropped, or denied (``deny``)."""

    forwarded: int = 0
    slow_down: int = 0
    dropped: int = 0
    denied: int = 0

    @property
    def total(self) -> int:
        return self.forwarded + self.slow_down + self.dropped + self.denied


@dataclass
class FaultyProxy:
    """Forward to ``upstream`` (``http://host:port``); answer a share ``p_503`` of requests with 503
    SlowDown and drop a share ``p_drop``, drawn from ``random.Random(seed)``. ``url`` is the proxy's
    own address once started; ``counts`` tallies what it did. ``conditional_put_status`` answers PUTs
    with If-None-Match so (a store without conditional writes); ``ignore_conditions`` forwards PUTs
    without If-Match and If-None-Match (a store that ignores them); ``deny`` refuses requests matching it."""

    upstream: str
    p_503: float = 0.1
    p_drop: float = 0.05
    seed: int = 0
    host: str = "127.0.0.1"
    conditional_put_status: int = 0
    ignore_conditions: bool = False
    deny: str = ""
    url: str = ""
    counts: FaultCounts = field(default_factory=FaultCounts)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise InputError(f"FaultyProxy upstream must be http://host:port, got {self.upstream!r}")
        if not (0 <= self.p_503 <= 1 and 0 <= self.p_drop <= 1 and self.p_503 + self.p_drop <= 1):
            raise InputError(f"p_503 and p_drop must be shares in [0, 1] summing to at most 1, got {self.p_503}, {self.p_drop}")
        if self.conditional_put_status and self.conditional_put_status not in _CONDITIONAL_PUT_ERRORS:
            raise InputError(f"conditional_put_status must be 0 or one of {sorted(_CONDITIONAL_PUT_ERRORS)}, got {self.conditional_put_status}")

    def start(self) -> FaultyProxy:
        parts = urlsplit(self.upstream)
        rng = random.Random(self.seed)
        denied = re.compile(self.deny) if self.deny else None
        lock = threading.Lock()
        proxy = self

        def decide() -> str:
            with lock:
                draw = rng.random()
                if draw < proxy.p_drop:
                    proxy.counts.dropped += 1
                    return "drop"
                if draw < proxy.p_drop + proxy.p_503:
                    proxy.counts.slow_down += 1
                    return "503"
                proxy.counts.forwarded += 1
                return "forward"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each reply waits on the client's delayed ACK: 58 ms a request, not 15

            def log_message(self, *args) -> None:  # the test output stays readable
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _error(self, status: int, reason: str, body: bytes) -> None:
                self.send_response(status, reason)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":  # a reply to HEAD has no body: its bytes would begin the next reply
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                if proxy.conditional_put_status and self.command == "PUT" and "If-None-Match" in self.headers:
                    reason, code, message = _CONDITIONAL_PUT_ERRORS[proxy.conditional_put_status]
                    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                            f"<Message>{message}</Message></Error>").encode()
                    self._error(proxy.conditional_put_status, reason, body)
                    return
                if denied is not None and denied.search(f"{self.command} {self.path} {body.decode('utf-8', 'replace')}"):
                    with lock:
                        proxy.counts.denied += 1
                    self._error(403, "Forbidden", _ACCESS_DENIED)
                    return
                action = decide()
                if action == "drop":
                    self.close_connection = True
                    return
                if action == "503":
                    self._error(503, "Slow Down", _SLOW_DOWN)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if proxy.ignore_conditions and self.command == "PUT":  # a store that ignores conditional writes
                    headers = {k: v for k, v in headers.items() if k.lower() not in ("if-match", "if-none-match")}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    reply = conn.getresponse()
                    data = reply.read()
                finally:
                    conn.close()
                self.send_response(reply.status, reply.reason)
                for key, value in reply.getheaders():  # send_response wrote Server and Date: twice, strict parsers refuse
                    if key.lower() not in _HOP_BY_HOP and key.lower() not in ("content-length", "server", "date"):
                        self.send_header(key, value)
                # a HEAD's Content-Length is the object's size, which the reply does not carry (it read as 0 bytes)
                size = reply.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", size if size is not None else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        server = ThreadingHTTPServer((self.host, 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="faulty-proxy", daemon=True)
        self._thread.start()
        self.url = f"http://{self.host}:{server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
