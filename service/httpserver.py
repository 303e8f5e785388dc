"""The exporter's HTTP server: ``/metrics``, a landing page, and bounds on what load can do.

A small ``http.server`` rather than prometheus_client's, so that paths (``/metrics`` and
``/``), methods (GET and HEAD), TLS, basic auth and load are under our control. Load is
bounded three ways: at most ``max_connections`` connections (a further one gets ``503``),
each served by a reused thread; at most :data:`REQUEST_SLOTS` requests parsed and answered
at once (so scrapers cannot starve the agent's sampling loop of the GIL); and timeouts for
silent connections and for requests that arrive slowly. What the body is comes from a
``render(accept, gzip)`` callable: the exporter's per-snapshot cache.
"""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import queue
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import urlsplit

from minerwatch.features.errors import InputError
from minerwatch.service.webconfig import BasicAuth, LiveProtection

log = logging.getLogger(__name__)

#: Connections served at once; beyond that a new connection gets ``503`` and is closed.
MAX_CONNECTIONS = 128
#: Seconds a connection may stay silent (idle keep-alive included) before it is closed.
CONNECTION_TIMEOUT_S = 10.0
#: Requests parsed and answered at once. Every thread that runs Python competes with the
#: sampling loop for the GIL; threads waiting for a slot do not, so fifty busy scrapers
#: cannot slow the agent's sampling down (their requests queue here instead).
REQUEST_SLOTS = 4
#: Seconds a request may take to arrive in full, or its response to be taken, once its
#: first byte is in: a slow client must not keep a request slot for long.
REQUEST_TIMEOUT_S = 2.0

#: Sent, without reading the request, on a connection beyond ``max_connections``.
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 33\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n"
    b"Too many connections, try again.\n"
)

_LANDING = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>minerwatch</title></head>
<body><h1>minerwatch</h1><p><a href="/metrics">Metrics</a></p></body></html>
"""


@dataclass(frozen=True)
class Serving:
    """How the server answers: TLS and auth (asked again for each connection and request, so a
    web config can change under it), the renderer and the connection bound."""

    protection: LiveProtection
    render: Callable[[str | None, bool], tuple[bytes, str]]
    max_connections: int = MAX_CONNECTIONS
    on_refused: Callable[[], None] = lambda: None


class _Workers:
    """Up to ``limit`` daemon threads, each serving one connection at a time.

    A thread that finished a connection waits ``idle_s`` for the next one before it exits,
    so a steady stream of scrapes reuses threads instead of starting one per connection;
    :meth:`submit` never blocks and says False when all ``limit`` threads are busy.
    """

    def __init__(self, limit: int, idle_s: float = 30.0) -> None:
        self._limit = limit
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0  # threads waiting for a job, minus jobs handed to them and not taken

    def submit(self, job: Callable[[], None]) -> bool:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)
                return True
            if self._threads >= self._limit:
                return False
            self._threads += 1
        try:
            worker = threading.Thread(
                target=self._run, args=(job,), name="minerwatch-scrape", daemon=True
            )
            worker.start()
        except RuntimeError:  # the system cannot start another thread: same as busy
            with self._lock:
                self._threads -= 1
            return False
        return True

    def _run(self, job: Callable[[], None]) -> None:
        while True:
            try:
                job()
            except Exception:  # a bug in one connection must not take the thread's slot
                log.exception("scrape connection failed")
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    try:  # handed over just as the wait timed out
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        self._threads -= 1
                        return


class Server(HTTPServer):
    """Connections are served by a bounded set of reused threads (:class:`_Workers`)."""

    # The listen backlog: socketserver's default of 5 drops connection attempts under a
    # burst of scrapes, and the client's SYN retry then costs it 1 s, 3 s, 7 s.
    request_queue_size = 128

    def __init__(
        self, family: socket.AddressFamily, address: tuple[str, int], serving: Serving
    ) -> None:
        self.address_family = family
        self.protection = serving.protection
        self.render = serving.render
        self.on_refused = serving.on_refused
        self.workers = _Workers(serving.max_connections)
        self.request_slots = threading.BoundedSemaphore(REQUEST_SLOTS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); skip it.
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        # Runs in the accepting thread: it must never block, so a busy server says so at once.
        if not self.workers.submit(lambda: self._serve(request, client_address)):
            self._refuse(request, client_address)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except OSError as err:  # the client went away mid-request: its business, not ours
            log.debug("connection from %s: %s", client_address, err)
        finally:
            self.shutdown_request(request)

    def _refuse(self, request: socket.socket, client_address: Any) -> None:
        self.on_refused()
        log.debug("refused a connection from %s: all slots busy", client_address)
        if self.protection.current[0] is None:  # with TLS no plain-text way to say it
            try:
                request.setblocking(False)
                request.send(_BUSY)
                request.recv(65536)  # unread request bytes would turn close() into a reset
            except OSError:
                pass
        self.shutdown_request(request)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake in the per-connection thread, so a slow client cannot block accept().
        tls = self.protection.get()[0]
        if tls is not None:
            request.settimeout(_Handler.timeout)
            try:
                tls_request = tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as err:
                log.debug("TLS handshake with %s failed: %s", client_address, err)
                return
            with tls_request:  # wrap_socket detached ``request``; this one owns the fd now
                super().finish_request(tls_request, client_address)
            return
        super().finish_request(request, client_address)


def bind(address: str, port: int, serving: Serving) -> Server:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        return Server(family, (address, port), serving)
    except OSError:
        if address != "::":
            raise
        # Host without IPv6: "::" (the default) still has to listen, on IPv4 alone.
        return Server(socket.AF_INET, ("0.0.0.0", port), serving)


#: Errors binding a socket: the address or port the user gave is unusable.
_BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def bind_error(address: str, port: int, exc: OSError, expected: str) -> InputError | None:
    """The usage error for ``exc`` raised by :func:`bind` (None when it is no binding error:
    only binding raises these without a file name). A port in use names who holds it: a
    process that is not minerwatch listening on the exporter's port can answer Prometheus'
    scrapes with made-up scores (deploy/README.md, TLS)."""
    unusable = exc.filename is None and exc.errno in _BIND_ERRNOS
    if not (isinstance(exc, socket.gaierror) or unusable):
        return None
    shown = f"[{address}]" if ":" in address else address
    got = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        got += listener(port)
    return InputError(f"{shown}:{port}", None, expected, got)


def listener(port: int) -> str:
    """`` (held by pid N: EXE, user U)`` for the process listening on TCP ``port``, as far as
    this user can see it; empty when nothing is found."""
    import psutil

    try:
        found = [
            c
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
        ]
    except (psutil.Error, OSError):
        return ""
    pid = next((c.pid for c in found if c.pid is not None), None)
    if pid is None:
        return " (held by a process this user cannot see)" if found else ""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            exe, user = proc.exe() or proc.name(), proc.username()
    except (psutil.Error, OSError):
        return f" (held by pid {pid})"
    return f" (held by pid {pid}: {exe}, user {user})"


def accepts_gzip(header: str | None) -> bool:
    """True if an ``Accept-Encoding`` header allows gzip (``gzip;q=0`` refuses it).

    >>> accepts_gzip("gzip, deflate"), accepts_gzip("gzip;q=0"), accepts_gzip(None)
    (True, False, False)
    """
    for part in (header or "").split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        if coding.lower() not in ("gzip", "x-gzip"):
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


class _Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT_S
    # Buffer the response so headers and body leave in one write (one syscall, no Nagle wait).
    wbufsize = 1 << 16
    server_version = "minerwatch"
    sys_version = ""

    def handle_one_request(self) -> None:
        """Wait for a request without a slot (idle keep-alive), then parse and answer in one."""
        try:
            if not self.rfile.peek(1):  # type: ignore[attr-defined]  # a BufferedReader
                self.close_connection = True  # the client closed the connection
                return
        except TimeoutError:
            self.close_connection = True  # idle for CONNECTION_TIMEOUT_S
            return
        with self.server.request_slots:
            self.connection.settimeout(REQUEST_TIMEOUT_S)
            try:
                super().handle_one_request()
            finally:
                self.connection.settimeout(self.timeout)

    def parse_request(self) -> bool:
        """Refuse every method but GET and HEAD before any handler sees the request."""
        if not super().parse_request():
            return False
        if self.command in ("GET", "HEAD"):
            return True
        self.close_connection = True  # a request body we will not read may follow
        self._send(
            405,
            b"Method Not Allowed: only GET and HEAD\n",
            "text/plain; charset=utf-8",
            {"Allow": "GET, HEAD", "Connection": "close"},
        )
        return False

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        auth = self.server.protection.get()[1]
        if auth is not None and not self._authorized(auth):
            self._send(
                401,
                b"Unauthorized\n",
                "text/plain; charset=utf-8",
                {"WWW-Authenticate": 'Basic realm="minerwatch", charset="UTF-8"'},
            )
            return
        path = urlsplit(self.path).path
        if path == "/":
            self._send(200, _LANDING, "text/html; charset=utf-8")
            return
        if path != "/metrics":
            self._send(404, b"Not Found: metrics are at /metrics\n", "text/plain; charset=utf-8")
            return
        compress = accepts_gzip(self.headers.get("Accept-Encoding"))
        body, content_type = self.server.render(self.headers.get("Accept"), compress)
        self._send(200, body, content_type, {"Content-Encoding": "gzip"} if compress else None)

    do_HEAD = do_GET  # noqa: N815 (http.server naming)

    def _authorized(self, auth: BasicAuth) -> bool:
        header = self.headers.get("Authorization") or ""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return bool(sep) and auth.check(user, password)

    def _send(
        self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if log.isEnabledFor(logging.DEBUG):  # called for every request: format only if kept
            log.debug("%s - %s", self.address_string(), format % args)
