"""Record a Prometheus server's answers once, then serve them again from disk.

    python -m minerwatch.bench.replay --record --upstream http://127.0.0.1:9090 --store DIR
    python -m minerwatch.bench.replay --store DIR      # serves what was recorded

Why: on a machine this small, Prometheus answering on the same cores as the trainers takes
a third of them, so a benchmark cannot tell how training scales with workers. In a fleet,
Prometheus runs elsewhere. Replaying its recorded answers keeps every request and every
byte the client parses the same while the answering costs almost nothing here (a file read
and a socket write): the stand-in for "Prometheus on another machine".

An answer is keyed by method, path, query string and body. Replaying a request that was
not recorded is a 404 naming it (nothing is made up). Prints ``listening <url>`` on stdout
once ready.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: Request headers passed on to the upstream when recording (the rest are the client's own).
_PASSED = ("Content-Type", "Accept", "Authorization")


def answer_key(method: str, path: str, body: bytes) -> str:
    """File name of one recorded answer: a digest of what the client asked."""
    digest = hashlib.sha256(method.encode() + b"\0" + path.encode() + b"\0" + body)
    return digest.hexdigest()


def make_handler(store: Path, upstream: str | None) -> type[BaseHTTPRequestHandler]:
    """A handler that records through ``upstream`` (when given) or replays from ``store``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # quiet: the benchmark prints its own figures

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            key = answer_key(self.command, self.path, body)
            path = store / key
            if upstream is not None:
                status, data = self._fetch(body)
                if status == 200:
                    tmp = path.with_name(f"{key}.{threading.get_ident()}.tmp")
                    tmp.write_bytes(data)
                    os.replace(tmp, path)
            elif path.is_file():
                status, data = 200, path.read_bytes()
            else:
                status, data = 404, f"not recorded: {self.command} {self.path}".encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _fetch(self, body: bytes) -> tuple[int, bytes]:
            headers = {k: v for k in _PASSED if (v := self.headers.get(k)) is not None}
            request = urllib.request.Request(
                f"{upstream}{self.path}", data=body or None, headers=headers, method=self.command
            )
            try:
                with urllib.request.urlopen(request, timeout=600) as r:
                    return int(r.status), r.read()
            except urllib.error.HTTPError as e:
                return int(e.code), e.read()

        do_GET = _answer
        do_POST = _answer

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True, help="folder of recorded answers")
    p.add_argument("--record", action="store_true", help="record through --upstream")
    p.add_argument("--upstream", help="Prometheus URL to record from")
    p.add_argument("--port", type=int, default=0, help="loopback port (default: a free one)")
    args = p.parse_args(argv)
    if args.record != (args.upstream is not None):
        p.error("--record and --upstream go together")
    args.store.mkdir(parents=True, exist_ok=True)
    handler = make_handler(args.store, args.upstream.rstrip("/") if args.record else None)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    print(f"listening http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
