"""A client for the Prometheus HTTP API (and compatible stores: VictoriaMetrics, Thanos, Mimir).

Fleet mode reads weeks of history for thousands of hosts, so the client does the things a
one-off ``curl`` does not: it cuts long ranges so no answer holds more than ``max_points``
points per series (Prometheus refuses ``query_range`` beyond 11,000), runs at most
``concurrency`` requests at once, retries 5xx answers, timeouts and refused connections with
exponential backoff, and refuses a 4xx at once with the server's own message and the query.
Answers come back as pandas frames in long form: one row per point, a column per label,
``timestamp`` (Unix seconds) and ``value``.

Only the standard library speaks HTTP (``urllib`` + ``ssl``), so TLS options are exactly
those of :class:`Connection`.
"""

from __future__ import annotations

import base64
import json
import math
import random
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from minerwatch.features.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

#: Prometheus refuses a ``query_range`` whose answer would exceed this many points per series.
MAX_POINTS = 11_000

TIMESTAMP, VALUE = "timestamp", "value"


class PrometheusError(InputError):
    """The server refused a request (4xx), or could not be reached at all: exit code 2."""


class PrometheusUnavailable(RuntimeError):
    """5xx answers or timeouts that outlasted every retry: a transient failure (exit code 1)."""


@dataclass(frozen=True)
class Connection:
    """Where Prometheus is and how to authenticate; plain data, so it pickles to workers.

    Secrets are named by file, never given on a command line: ``password_file`` (with
    ``username``) for basic auth, ``bearer_token_file`` for a token (re-read on every
    request, so a rotated token is picked up). ``ca_file`` verifies the server;
    ``cert_file``/``key_file`` present a client certificate.
    """

    url: str
    username: str | None = None
    password_file: str | None = None
    bearer_token_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout: float = 30.0

    def headers(self) -> dict[str, str]:
        """Authorization header for the configured scheme (none, basic or bearer)."""
        if self.bearer_token_file:
            token = _secret(self.bearer_token_file, "--bearer-token-file")
            return {"Authorization": f"Bearer {token}"}
        if self.username is not None:
            password = _secret(self.password_file, "--password-file") if self.password_file else ""
            pair = f"{self.username}:{password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        return {}

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context with the CA and client certificate, for https URLs."""
        if not self.url.startswith("https:"):
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            where = self.cert_file or self.ca_file or self.url
            raise PrometheusError(where, None, "a readable PEM file", str(exc)) from None
        return ctx


def _secret(path: str | None, flag: str) -> str:
    try:
        return Path(str(path)).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise PrometheusError(str(path), None, f"a readable {flag}", exc.strerror) from None


class PromClient:
    """Query one Prometheus-compatible server.

    >>> client = PromClient(Connection("http://127.0.0.1:9090"))  # doctest: +SKIP
    >>> client.query_range('node_load1{job="node"}', start, end, step=15)  # doctest: +SKIP

    ``sleep`` and ``opener`` are parameters so tests can drive retries without waiting.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        concurrency: int = 4,
        retries: int = 4,
        backoff: float = 0.5,
        max_points: int = MAX_POINTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.connection = connection
        self.concurrency = max(1, concurrency)
        self.retries = retries
        self.backoff = backoff
        self.max_points = max_points
        self.sleep = sleep
        self.requests = 0  # HTTP requests sent, retries included
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._ssl = connection.ssl_context()
        self._lock = threading.Lock()

    # -- endpoints -----------------------------------------------------------------------------

    def query(self, expr: str, at: float) -> pd.DataFrame:
        """``/api/v1/query`` at one instant; a range selector returns its raw samples."""
        data = self._api("query", {"query": expr, "time": _ts(at)}, expr)
        return to_frame(data)

    def query_range(self, expr: str, start: float, end: float, step: float) -> pd.DataFrame:
        """``/api/v1/query_range``, cut into pieces of at most ``max_points`` steps per series.

        The pieces are evaluated concurrently (at most ``concurrency`` at once) and joined;
        each evaluation time appears once.
        """
        if not (step > 0 and end >= start):
            raise ValueError(f"need step > 0 and end >= start, got {start}..{end} step {step}")
        span = step * (self.max_points - 1)  # a piece [a, a + span] holds max_points steps
        starts = np.arange(start, end + step / 2, span + step) if end > start else [start]
        pieces = [(float(a), min(float(a) + span, end)) for a in starts]

        def piece(a: float, b: float) -> pd.DataFrame:
            params = {"query": expr, "start": _ts(a), "end": _ts(b), "step": f"{step:g}s"}
            return to_frame(self._api("query_range", params, expr))

        frames = self._parallel(piece, pieces)
        return _concat(frames)

    def samples(self, selector: str, start: float, end: float, interval: float) -> pd.DataFrame:
        """Raw samples of ``selector`` in [start, end], with their own timestamps.

        Sent as instant queries of range selectors (``selector[Nms]``), each spanning at most
        ``max_points`` sample intervals, so no answer exceeds ``max_points`` points per series
        at the expected ``interval``. Raw samples keep scrape timestamps and gaps as they are,
        which resampling on a step grid would blur.
        """
        if not (interval > 0 and end >= start):
            raise ValueError(f"need interval > 0 and end >= start, got {start}..{end}")
        span = interval * self.max_points
        n = max(1, math.ceil((end - start) / span))
        edges = [start + i * (end - start) / n for i in range(n + 1)]

        def piece(a: float, b: float) -> pd.DataFrame:
            ms = max(1, math.ceil((b - a) * 1000))
            return self.query(f"{selector}[{ms}ms]", b)

        frames = self._parallel(piece, list(zip(edges, edges[1:], strict=False)))
        frame = _concat(frames)
        if len(frame):
            labels = [c for c in frame.columns if c not in (TIMESTAMP, VALUE)]
            inside = (frame[TIMESTAMP] >= start) & (frame[TIMESTAMP] <= end)
            frame = frame[inside].drop_duplicates([*labels, TIMESTAMP])
            frame = frame.sort_values([*labels, TIMESTAMP], kind="stable").reset_index(drop=True)
        return frame

    def series(self, match: Sequence[str], start: float, end: float) -> list[dict[str, str]]:
        """``/api/v1/series``: the label sets of the series matching any of ``match``."""
        params = [("match[]", m) for m in match] + [("start", _ts(start)), ("end", _ts(end))]
        data = self._api("series", params, " or ".join(match))
        return [dict(d) for d in data]

    def labels(self, match: Sequence[str], start: float, end: float) -> list[str]:
        """``/api/v1/labels``: label names used by the series matching ``match``."""
        params = [("match[]", m) for m in match] + [("start", _ts(start)), ("end", _ts(end))]
        return [str(x) for x in self._api("labels", params, " or ".join(match))]

    def label_values(self, label: str, match: Sequence[str], start: float, end: float) -> list[str]:
        """``/api/v1/label/<label>/values`` among the series matching ``match``."""
        params = [("match[]", m) for m in match] + [("start", _ts(start)), ("end", _ts(end))]
        path = f"label/{urllib.parse.quote(label, safe='')}/values"
        # the one endpoint Prometheus serves only to GET
        return [str(x) for x in self._api(path, params, " or ".join(match), method="GET")]

    # -- transport -----------------------------------------------------------------------------

    def _parallel(
        self, piece: Callable[[float, float], pd.DataFrame], spans: Sequence[tuple[float, float]]
    ) -> list[pd.DataFrame]:
        """``piece(a, b)`` for every span, at most ``concurrency`` at once, in order."""
        if len(spans) == 1:
            return [piece(*spans[0])]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(spans))) as pool:
            return list(pool.map(lambda span: piece(*span), spans))

    def _api(
        self,
        endpoint: str,
        params: dict[str, str] | list[tuple[str, str]],
        what: str,
        method: str = "POST",
    ) -> Any:
        """POST a form to ``/api/v1/<endpoint>``; the ``data`` of a success, else an error.

        POST keeps long selectors out of URLs (and server logs); every compatible store
        accepts it for these endpoints.
        """
        url = f"{self.connection.url.rstrip('/')}/api/v1/{endpoint}"
        form = urllib.parse.urlencode(params)
        body: bytes | None = form.encode()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        target = url  # errors name the endpoint, not a query string of any length
        if method == "GET":
            target, body = f"{url}?{form}", None
            del headers["Content-Type"]
        headers.update(self.connection.headers())
        last, unreachable = "", False
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1)
                self.sleep(delay * (0.5 + random.random() / 2))
            request = urllib.request.Request(target, data=body, headers=headers, method=method)
            with self._lock:
                self.requests += 1
            try:
                with self._slots:
                    with urllib.request.urlopen(
                        request, timeout=self.connection.timeout, context=self._ssl
                    ) as response:
                        payload = response.read()
                return _data(payload, url, what)
            except urllib.error.HTTPError as err:
                text = err.read().decode("utf-8", "replace")
                if err.code < 500 and err.code != 429:
                    raise PrometheusError(
                        url, None, f"an answer to {what!r}", _refusal(err.code, text)
                    ) from None
                last = f"HTTP {err.code}: {_message(text)}"
            except urllib.error.URLError as err:
                if isinstance(err.reason, ssl.SSLError):  # a certificate will not fix itself
                    raise PrometheusError(url, None, "a TLS connection", str(err.reason)) from None
                last = f"{err.reason}"
                unreachable = not isinstance(err.reason, TimeoutError)
                continue
            except (TimeoutError, ConnectionError) as err:  # while reading the answer
                last = f"{type(err).__name__}: {err}"
            unreachable = False
        if not unreachable:
            raise PrometheusUnavailable(
                f"{url}: {what!r} failed {self.retries + 1} times; last: {last}"
            )
        raise PrometheusError(
            self.connection.url,
            None,
            "a reachable Prometheus",
            f"{last} ({self.retries + 1} attempts)",
        )


def _ts(t: float) -> str:
    return f"{t:.3f}"


def _message(text: str) -> str:
    try:
        answer = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    if isinstance(answer, dict):
        return f"{answer.get('errorType', 'error')}: {answer.get('error', text.strip()[:300])}"
    return text.strip()[:300]


def _refusal(code: int, text: str) -> str:
    return f"HTTP {code} {_message(text)}"


def _data(payload: bytes, url: str, what: str) -> Any:
    try:
        answer = json.loads(payload)
    except ValueError:
        raise PrometheusError(url, None, "a JSON answer", repr(payload[:200])) from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        got = _message(payload.decode("utf-8", "replace"))
        raise PrometheusError(url, None, f"an answer to {what!r}", got)
    return answer.get("data")


def to_frame(data: Any) -> pd.DataFrame:
    """A ``query``/``query_range`` answer as a long frame: labels, ``timestamp``, ``value``.

    Matrix and vector answers both work; timestamps may be integers or fractions (stores
    differ), values are strings as the API sends them ("NaN" and "+Inf" included). Label
    columns are categorical: the same few strings repeat on every row.
    """
    import pandas as pd

    kind = data.get("resultType") if isinstance(data, dict) else None
    result = data.get("result", []) if isinstance(data, dict) else []
    if kind not in ("matrix", "vector"):
        raise PrometheusError("answer", None, "a matrix or vector result", repr(kind))
    label_sets: list[dict[str, str]] = []
    times: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for item in result:
        points = item.get("values") if kind == "matrix" else [item.get("value")]
        if not points:
            continue
        label_sets.append(dict(item.get("metric", {})))
        times.append(np.fromiter((float(p[0]) for p in points), np.float64, len(points)))
        values.append(np.fromiter((float(p[1]) for p in points), np.float64, len(points)))
    names = sorted({k for labels in label_sets for k in labels})
    lengths = np.array([len(t) for t in times], dtype=np.intp)
    owner = np.repeat(np.arange(len(times)), lengths)
    columns: dict[str, Any] = {}
    for name in names:
        uniques = sorted({labels.get(name, "") for labels in label_sets})
        code_of = {u: i for i, u in enumerate(uniques)}
        codes = np.array([code_of[labels.get(name, "")] for labels in label_sets], dtype=np.intp)
        columns[name] = pd.Categorical.from_codes(codes[owner], categories=pd.Index(uniques))
    columns[TIMESTAMP] = np.concatenate(times) if times else np.zeros(0)
    columns[VALUE] = np.concatenate(values) if values else np.zeros(0)
    return pd.DataFrame(columns)


def _concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Join answers whose label columns may differ; categories are unioned."""
    import pandas as pd

    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({TIMESTAMP: np.zeros(0), VALUE: np.zeros(0)})
    if len(frames) == 1:
        return frames[0]
    names = sorted({c for f in frames for c in f.columns} - {TIMESTAMP, VALUE})
    out: dict[str, Any] = {}
    for name in names:
        parts = [f[name].astype(str) if name in f else pd.Series([""] * len(f)) for f in frames]
        out[name] = pd.Categorical(np.concatenate([p.to_numpy(dtype=object) for p in parts]))
    out[TIMESTAMP] = np.concatenate([f[TIMESTAMP].to_numpy() for f in frames])
    out[VALUE] = np.concatenate([f[VALUE].to_numpy() for f in frames])
    return pd.DataFrame(out)
