"""``--header 'NAME: VALUE'`` of the fleet commands: Grafana Mimir and Cortex answer 401 "no org
id" to a query without ``X-Scope-OrgID``. Through the real ``minerwatch fleet`` commands against
a real Prometheus (two simulated hosts' last 2.4 hours, backfilled) behind a proxy that demands
the tenant header as Mimir does; and the headers refused when the command line is parsed."""

from __future__ import annotations

import http.server
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from entry import run, usage_error
from promtools import PROMETHEUS, PROMTOOL, ProxyHandler, require, started_prometheus

from minerwatch.bench.fleet_backfill import backfill
from minerwatch.bench.simulate import simulate

pytestmark = pytest.mark.prometheus

TENANT = "team-a"
INTERVAL = 15.0
HISTORY = 0.1 * 86400.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[tuple[str, list[str], float, float]]:
    """(Prometheus URL, hosts, start, end)."""
    require(PROMETHEUS)
    promtool = require(PROMTOOL)
    root = tmp_path_factory.mktemp("headers")
    end = float(int(time.time() // INTERVAL) * INTERVAL)
    labels = simulate(
        root / "sim", hosts=2, train_days=HISTORY / 86400.0, test_days=0.0, seed=11,
        interval=INTERVAL, start=end - HISTORY, procs=False,
    )  # fmt: skip
    backfill(root / "sim", ["train"], root / "tsdb", promtool)
    split = labels["splits"]["train"]
    with started_prometheus(root, root / "tsdb") as prom:
        yield prom.url, sorted(labels["hosts"]), split["start"] - 7.5, split["end"] + 7.5


class TenantProxy(http.server.ThreadingHTTPServer):
    """Forwards to Prometheus what carries ``X-Scope-OrgID: team-a``, and answers anything else
    as Mimir does (401, "no org id"); ``seen`` is every request's tenant header and body."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[tuple[str | None, str]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _TenantHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _TenantHandler(ProxyHandler):
    server: TenantProxy

    def forward(self, body: bytes | None) -> None:
        tenant = self.headers.get("X-Scope-OrgID")  # names are case-insensitive here
        with self.server.lock:
            form = urllib.parse.unquote_plus((body or b"").decode()).replace("\\\\", "\\")
            self.server.seen.append((tenant, form))
        if tenant != TENANT:
            self._answer(401, b"no org id\n", "text/plain; charset=utf-8")
            return
        self._answer(*self.upstream_answer(self.server.upstream, body), "application/json")

    def _answer(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def proxy(fleet) -> Iterator[TenantProxy]:
    server = TenantProxy(fleet[0])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_export_through_a_tenant_proxy_needs_the_header(fleet, proxy, tmp_path):
    _, hosts, start, end = fleet
    args = ["fleet", "export", "--prometheus", proxy.url, "--start", start, "--end", end,
            "--retries", 0]  # fmt: skip
    refused = run(*args, "--output", tmp_path / "without")
    usage_error(refused, "HTTP 401 no org id", "--header 'X-Scope-OrgID: TENANT'")
    assert not list((tmp_path / "without").glob("*.csv"))

    proxy.seen.clear()
    done = run(*args, "--output", tmp_path / "with", "--header", f"X-Scope-OrgID: {TENANT}")
    assert done.returncode == 0, done.stderr
    written = [p for p in (tmp_path / "with").glob("*.csv") if not p.name.endswith(".procs.csv")]
    assert sorted(p.name for p in written) == [f"{h}.csv" for h in hosts]
    assert all(len(p.read_text().splitlines()) > 100 for p in written)
    assert proxy.seen and {tenant for tenant, _ in proxy.seen} == {TENANT}


def test_train_workers_in_other_processes_send_it_too(fleet, proxy, tmp_path):
    """--jobs 2: each worker process reads its hosts with the Connection it was sent."""
    _, hosts, start, end = fleet
    models = tmp_path / "models"
    done = run("fleet", "train", "--prometheus", proxy.url, "--start", start, "--end", end,
               "--models", models, "--jobs", 2, "--header", f"x-scope-orgid:{TENANT}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.parent.name for p in models.glob("*/meta.json")) == hosts
    assert {tenant for tenant, _ in proxy.seen} == {TENANT}
    for host in hosts:  # the workers' reads went through the proxy, not only the discovery
        assert any(re.escape(host) in body for _, body in proxy.seen), host


@pytest.mark.parametrize(
    ("command", "headers", "expected"),
    [
        ("export", ["X Scope-OrgID: team-a"], "NAME an HTTP header name"),
        ("train", ["X-Scope-OrgID: team-a\r\nX-Other: b"], "no CR, LF or other control"),
        ("score", ["X-Scope-OrgID: team-a\n"], "no CR, LF or other control"),
        ("export", ["X-Scope-OrgID:"], "a VALUE after 'X-Scope-OrgID:'"),
        ("export", ["X-Scope-OrgID team-a"], "expected 'NAME: VALUE'"),
        ("score", ["Authorization: Bearer s3cret"], "--bearer-token-file, or --username with"),
        ("serve", ["proxy-authorization: Basic s3cret"], "secrets are read from files"),
        ("train", ["Host: prom"], "a header minerwatch does not set itself"),
        ("serve", ["X-Scope-OrgID: team-a", "x-scope-orgid: team-b"], "each header once"),
    ],
    ids=["name", "crlf", "lf", "empty", "colon", "authorization", "proxy-auth", "host", "twice"],
)
def test_a_bad_header_is_refused_when_the_command_line_is_read(
    tmp_path: Path, command: str, headers: list[str], expected: str
) -> None:
    (tmp_path / "models").mkdir()
    extra = {
        "train": ["--models", tmp_path / "trained"],
        "score": ["--models", tmp_path / "models", "--output", tmp_path / "s.csv", "--start", 0],
        "export": ["--output", tmp_path / "exported", "--start", 0],
        "serve": ["--models", tmp_path / "models"],
    }[command]
    given = [word for h in headers for word in ("--header", h)]
    r = run("fleet", command, "--prometheus", "http://127.0.0.1:9", *extra, *given)
    usage_error(r, "argument --header: expected", expected)
    assert "s3cret" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"], "wrote something"


def test_help_shows_the_header_flag_with_the_mimir_example() -> None:
    r = run("fleet", "train", "--help")
    assert r.returncode == 0, r.stderr
    flat = " ".join(r.stdout.split())
    assert "[--header 'NAME: VALUE']" in flat, flat  # in the usage line
    entry = flat.split("--header 'NAME: VALUE'")[-1].split("--ca-file")[0]
    for text in ("'X-Scope-OrgID: team-a'", "Mimir", "repeatable", "(default: none)"):
        assert text in entry, (text, entry)
