"""A client for the Prometheus HTTP API (and compatible stores: VictoriaMetrics, Thanos, Mimir).

Fleet mode reads weeks of history for thousands of hosts, so the client does the things a
one-off ``curl`` does not: it cuts long ranges so no answer holds more than ``max_points``
points per series (Prometheus refuses ``query_range`` beyond 11,000), runs at most
``concurrency`` requests at once, retries 5xx answers, timeouts, refused connections and
answers cut short with exponential backoff, reads raw samples in halves when the server
refuses a span for its sample limit (Prometheus' ``--query.max-samples``), and refuses
another 4xx at once with the server's own message and the query.
Answers come back as pandas frames in long form: one row per point, a column per label,
``timestamp`` (Unix seconds) and ``value``; or, from the ``*_series`` methods, as
:class:`RawSeries` (labels and two numpy arrays per series), parsed without a Python object
per point (:func:`parse_series`): what reading weeks of history needs.

Only the standard library speaks HTTP (``urllib`` + ``ssl``), so TLS options are exactly
those of :class:`Connection`.
"""

from __future__ import annotations

import base64
import functools
import gzip
import http.client
import json
import math
import random
import re
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from minerwatch.features.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

#: Prometheus refuses a ``query_range`` whose answer would exceed this many points per series.
MAX_POINTS = 11_000

TIMESTAMP, VALUE = "timestamp", "value"

_T = TypeVar("_T")


class PrometheusError(InputError):
    """The server refused a request (4xx), or could not be reached at all: exit code 2."""


class PrometheusUnreachable(PrometheusError):
    """Nothing answered at the URL (connection refused, no such host) through every retry."""


class PrometheusUnavailable(RuntimeError):
    """5xx answers or timeouts that outlasted every retry: a transient failure (exit code 1)."""


class Cancelled(PrometheusUnavailable):
    """Not sent: the client was cancelled, its command is stopping (:meth:`PromClient.cancel`)."""


@dataclass(frozen=True)
class Connection:
    """Where Prometheus is and how to authenticate; plain data, so it pickles to workers.

    Secrets are named by file, never given on a command line: ``password_file`` (with
    ``username``) for basic auth, ``bearer_token_file`` for a token (re-read on every
    request, so a rotated token is picked up). ``ca_file`` verifies the server;
    ``cert_file``/``key_file`` present a client certificate. ``gzip`` asks for compressed
    answers: a quarter of the bytes on the wire for ~7x Prometheus' CPU (measured on 2.42,
    docs/fleet.md), so only for slow or metered links. ``extra_headers`` are sent with every
    request (``--header``: Mimir's and Cortex's ``X-Scope-OrgID``), a tuple of (name, value)
    so the connection stays hashable and pickles; checked by ``--header``
    (:mod:`.headers`), never credentials.
    """

    url: str
    username: str | None = None
    password_file: str | None = None
    bearer_token_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout: float = 30.0
    gzip: bool = False
    #: Tries after the first for a request that failed for a transient reason (5xx, timeout,
    #: refused connection, answer cut short), waiting 0.5 s, 1 s, 2 s ... before each.
    retries: int = 4
    extra_headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_url(self.url)

    def headers(self) -> dict[str, str]:
        """The ``extra_headers`` and the Authorization header of the configured scheme (none,
        basic or bearer)."""
        out = dict(self.extra_headers)
        if self.bearer_token_file:
            token = _secret(self.bearer_token_file, "--bearer-token-file")
            out["Authorization"] = f"Bearer {token}"
        elif self.username is not None:
            password = _secret(self.password_file, "--password-file") if self.password_file else ""
            pair = f"{self.username}:{password}".encode()
            out["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return out

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context with the CA and client certificate, for https URLs."""
        if urllib.parse.urlsplit(self.url).scheme != "https":  # HTTPS:// too
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            where = self.cert_file or self.ca_file or self.url
            raise PrometheusError(where, None, "a readable PEM file", str(exc)) from None
        return ctx


def check_url(url: str) -> None:
    """Refuse a ``--prometheus`` that is not an http(s) base URL, before any request: urllib
    would fail on it with a bare ValueError (an unexpected failure), or only after every
    retry (no host, port 0), or send what the user did not mean (a query, credentials)."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or above 65535
        port = 0
    problem = ""
    if parts.scheme not in ("http", "https") or not parts.hostname:
        pass
    elif any(c.isspace() or not c.isprintable() for c in url):
        problem = " without spaces"
    elif port == 0:
        problem = " with a port from 1 to 65535"
    elif parts.username is not None or parts.password is not None:
        problem = " without credentials (use --username, --password-file)"
    elif parts.query or parts.fragment:
        problem = " without ?query or #fragment"
    else:
        return
    expected = f"an http:// or https:// base URL (e.g. http://prom:9090){problem}"
    _, at, host = parts.netloc.rpartition("@")
    shown = url.replace(parts.netloc, f"...@{host}", 1) if at else url  # no password echoed
    raise PrometheusError("--prometheus", None, expected, repr(shown))


def _secret(path: str | None, flag: str) -> str:
    try:
        return Path(str(path)).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise PrometheusError(str(path), None, f"a readable {flag}", exc.strerror) from None


@dataclass(frozen=True)
class RawSeries:
    """One series of an answer: its labels and its points, timestamps (Unix seconds) and
    values as float64 arrays of equal length, in the order the server sent them."""

    labels: dict[str, str]
    timestamps: np.ndarray
    values: np.ndarray

    def key(self) -> tuple[tuple[str, str], ...]:
        """The label set as a hashable, sortable key."""
        return tuple(sorted(self.labels.items()))


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
        retries: int | None = None,
        backoff: float = 0.5,
        max_points: int = MAX_POINTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.connection = connection
        self.concurrency = max(1, concurrency)
        self.retries = connection.retries if retries is None else retries
        self.backoff = backoff
        self.max_points = max_points
        self.sleep = sleep
        self.requests = 0  # HTTP requests sent, retries included
        self.received = 0  # bytes of answers as they came over the wire
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._ssl = connection.ssl_context()
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Send no more requests (those in flight still get their answer): a command stopping
        (Ctrl-C, SIGTERM) while a thread reads a host need not wait for every query of it."""
        self._cancelled.set()

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

    def query_series(self, expr: str, at: float) -> list[RawSeries]:
        """:meth:`query` as :class:`RawSeries` (a vector answer gives one point per series)."""
        return self._api_series("query", {"query": expr, "time": _ts(at)}, expr)

    def query_range_series(
        self, expr: str, start: float, end: float, step: float
    ) -> list[RawSeries]:
        """:meth:`query_range` as :class:`RawSeries`, one per label set, sorted by labels.

        ``step`` is sent in seconds with millisecond precision, so any scrape interval works.
        """
        if not (step > 0 and end >= start):
            raise ValueError(f"need step > 0 and end >= start, got {start}..{end} step {step}")
        span = step * (self.max_points - 1)
        starts = np.arange(start, end + step / 2, span + step) if end > start else [start]
        pieces = [(float(a), min(float(a) + span, end)) for a in starts]

        def piece(a: float, b: float) -> list[RawSeries]:
            params = {"query": expr, "start": _ts(a), "end": _ts(b), "step": f"{step:.3f}"}
            return self._api_series("query_range", params, expr)

        return merge_series(self._parallel(piece, pieces))

    def samples_series(
        self, selector: str, start: float, end: float, interval: float
    ) -> list[RawSeries]:
        """:meth:`samples` as :class:`RawSeries`: the same requests, the same points (each
        timestamp once, in [start, end], in time order), one per label set sorted by labels,
        without pandas and without a Python object per point. A piece the server refuses for
        its sample limit (:func:`too_many_samples`) is read again as two halves, down to one
        ``interval``."""
        if not (interval > 0 and end >= start):
            raise ValueError(f"need interval > 0 and end >= start, got {start}..{end}")
        span = interval * self.max_points
        n = max(1, math.ceil((end - start) / span))
        edges = [start + i * (end - start) / n for i in range(n + 1)]

        def piece(a: float, b: float) -> list[list[RawSeries]]:
            ms = max(1, math.ceil((b - a) * 1000))
            try:
                return [self.query_series(f"{selector}[{ms}ms]", b)]
            except PrometheusError as exc:  # over the server's sample limit: halve the span
                if not too_many_samples(exc):
                    raise
                if b - a <= interval:
                    raise PrometheusError(
                        exc.path, None, f"{exc.expected} (even {b - a:g} s at a time: raise "
                        "the server's sample limit, Prometheus' --query.max-samples)", exc.got,
                    ) from None  # fmt: skip
            mid = (a + b) / 2
            return piece(a, mid) + piece(mid, b)

        pieces = self._parallel(piece, list(zip(edges, edges[1:], strict=False)))
        return merge_series([p for parts in pieces for p in parts], start, end)

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
        self, piece: Callable[[float, float], _T], spans: Sequence[tuple[float, float]]
    ) -> list[_T]:
        """``piece(a, b)`` for every span, at most ``concurrency`` at once, in order."""
        if len(spans) == 1:
            return [piece(*spans[0])]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(spans))) as pool:
            try:
                return list(pool.map(lambda span: piece(*span), spans))
            except BaseException:
                # failed or stopping (Ctrl-C, SIGTERM): the pieces not sent yet are not sent;
                # the exit waited for every one, as long as a slow server took to answer them
                pool.shutdown(cancel_futures=True)
                raise

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
        url, payload = self._request(endpoint, params, what, method)
        return _data(payload, url, what)

    def _api_series(
        self, endpoint: str, params: dict[str, str] | list[tuple[str, str]], what: str
    ) -> list[RawSeries]:
        """:meth:`_api` for ``query``/``query_range``, parsed by :func:`parse_series`."""
        url, payload = self._request(endpoint, params, what, "POST")
        return parse_series(payload, url, what)

    def _request(
        self,
        endpoint: str,
        params: dict[str, str] | list[tuple[str, str]],
        what: str,
        method: str,
    ) -> tuple[str, bytes]:
        """(URL, body of a 2xx answer), with retries; refusals raise at once."""
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
        if self.connection.gzip:
            headers["Accept-Encoding"] = "gzip"
        headers.update(self.connection.headers())
        last, unreachable = "", False
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1)
                self.sleep(delay * (0.5 + random.random() / 2))
            if self._cancelled.is_set():
                raise Cancelled(f"{target}: not asked, the command is stopping")
            request = urllib.request.Request(target, data=body, headers=headers, method=method)
            with self._lock:
                self.requests += 1
            try:
                with self._slots:
                    with urllib.request.urlopen(
                        request, timeout=self.connection.timeout, context=self._ssl
                    ) as response:
                        raw, packed = response.read(), _is_gzip(response.headers)
                with self._lock:
                    self.received += len(raw)
                if not packed:
                    return url, raw
                try:
                    return url, gzip.decompress(raw)
                except (OSError, EOFError, zlib.error) as err:  # cut short on the way: retry
                    last = f"a damaged gzip answer: {err}"
            except urllib.error.HTTPError as err:
                text = _unzipped(err.read(), err.headers).decode("utf-8", "replace")
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
            except http.client.HTTPException as err:  # an answer cut short (server stopped)
                last = f"{type(err).__name__}: {err}"
            unreachable = False
        if not unreachable:
            raise PrometheusUnavailable(
                f"{url}: {what!r} failed {self.retries + 1} times; last: {last}"
            )
        raise PrometheusUnreachable(
            self.connection.url,
            None,
            "a reachable Prometheus",
            f"{last} ({self.retries + 1} attempts)",
        )


#: How servers say an answer would hold more samples than they allow: Prometheus (and Thanos,
#: which runs its engine), VictoriaMetrics' -search.maxSamplesPerQuery, Mimir's limits.
TOO_MANY_SAMPLES = re.compile(
    r"too many samples|maxSamplesPerQuery|exceeded the maximum number of (samples|chunks)"
)


def too_many_samples(exc: PrometheusError) -> bool:
    """Whether the server refused a query for the number of samples it would load, which a
    shorter span of the same query avoids."""
    return TOO_MANY_SAMPLES.search(str(exc.got)) is not None


def _is_gzip(headers: Any) -> bool:
    return headers is not None and headers.get("Content-Encoding", "").lower() == "gzip"


def _unzipped(raw: bytes, headers: Any) -> bytes:
    """An error answer's body, decompressed when it says it is gzip (as it came if damaged:
    it is only read for its message)."""
    if not _is_gzip(headers):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error):
        return raw


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
    said = f"HTTP {code} {_message(text)}"
    if code == 401 and "no org id" in text.lower():  # Mimir's and Cortex's words
        said += " (Mimir and Cortex need the tenant: --header 'X-Scope-OrgID: TENANT')"
    return said


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


# -- answers as arrays ---------------------------------------------------------------------------

_VALUES = b'"values":['
#: What a number of a ``values`` array may be made of: digits, signs, dot, exponent, Go's
#: "NaN"/"+Inf"/"-Inf". Deleting these from compact ``[t,"v"],...`` text leaves its skeleton.
_NUMBER_CHARS = b"0123456789eE+-.naNIf"
_PAIR = b'[,""],'
_TO_LINES = bytes.maketrans(b",", b"\n")
#: From this many numbers on, pandas' C reader beats ``np.fromstring`` (its ~0.5 ms per call
#: is paid back; 2.3x faster on a host-week), when it is exact (:func:`_csv_exact`).
CSV_FROM = 8192
#: Numbers a converter that is not correctly rounded gets wrong (pandas 2.2's default reads
#: the first one an ulp off), and every spelling of a special value Prometheus writes.
_CANARIES = (
    "1.700000000000000177635684", "0.1", "4.9e-324", "2.2250738585072011e-308",
    "1.7976931348623157e+308", "9007199254740993", "123456789012345678901234567890.123e-10",
    "1767571200.123", "1e-300", "-0", "NaN", "+Inf", "-Inf",
)  # fmt: skip


def _csv_floats(text: bytes) -> np.ndarray:
    """One number per line, parsed by pandas' C reader; only "NaN" is missing data, and an
    empty line is no number (so the count tells)."""
    import io

    import pandas as pd

    frame = pd.read_csv(
        io.BytesIO(text), header=None, names=["v"], dtype={"v": np.float64}, engine="c",
        keep_default_na=False, na_values=["NaN"], skip_blank_lines=True,
    )  # fmt: skip
    return np.asarray(frame["v"].to_numpy(), dtype=np.float64)


@functools.cache
def _csv_exact() -> bool:
    """Whether pandas' C reader rounds every number as Python's ``float`` does.

    pandas 3.1 reads floats with fast_float, which is correctly rounded, as is ``float``.
    Earlier defaults are not (they differ on real answers), and the exact
    ``float_precision="round_trip"`` of pandas 2 is slower than ``np.fromstring``; the
    canaries guard against a future converter that is not exact.
    """
    import pandas as pd

    version = re.match(r"(\d+)\.(\d+)", pd.__version__)
    if version is None or (int(version[1]), int(version[2])) < (3, 1):
        return False
    want = np.array([float(c) for c in _CANARIES], dtype=np.float64)
    try:
        got = _csv_floats("\n".join(_CANARIES).encode())
    except ValueError:
        return False
    return got.tobytes() == want.tobytes()


def parse_numbers(text: bytes, count: int, csv_from: int = CSV_FROM) -> np.ndarray | None:
    """``count`` numbers, one per line, as float64: each exactly what Python's ``float`` gives
    for its line (the same bits), or None when some line is not one number that both read
    (the caller then lets ``float`` read them).

    ``np.fromstring`` (numpy's correctly rounded ``strtod``) below ``csv_from`` numbers,
    pandas' C reader from there on when it is exact (:func:`_csv_exact`).
    """
    if not count:
        return None if text else np.zeros(0)
    try:
        if count >= csv_from and _csv_exact():
            flat = _csv_floats(text)
        else:  # a comma, not whitespace: numpy lets whitespace separators match nothing
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # "could not be read"
                flat = np.fromstring(text.replace(b"\n", b","), dtype=np.float64, sep=",")
    except ValueError:
        return None
    return flat if flat.size == count else None


def _points(chunks: Sequence[bytes]) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The insides of ``values`` arrays (``[t,"v"],[t,"v"],...``), all parsed in one call, as
    (timestamps, values) per chunk; None when any chunk is not exactly that shape.

    The skeleton left by deleting number characters must be ``[,""]`` per point, so every
    number is plain text (no spaces, escapes or other spellings) and points are pairs.
    """
    counts = [c.count(b"[") for c in chunks]
    total = sum(counts)
    joined = b",".join(c for c in chunks if c)
    if not joined:
        return [(np.zeros(0), np.zeros(0)) for _ in chunks]
    if joined.translate(None, _NUMBER_CHARS) != (_PAIR * total)[:-1]:
        return None
    flat = parse_numbers(joined.translate(_TO_LINES, b'[]"'), 2 * total)
    if flat is None:
        return None
    pairs = flat.reshape(total, 2)
    edges = np.concatenate([[0], np.cumsum(counts)]).tolist()
    # copies of their own: a series kept for later must not keep the whole answer alive
    return [
        (pairs[a:b, 0].copy(), pairs[a:b, 1].copy()) for a, b in zip(edges, edges[1:], strict=False)
    ]


def parse_series(payload: bytes, url: str = "answer", what: str = "") -> list[RawSeries]:
    """A ``query``/``query_range`` answer body as :class:`RawSeries`, one per result.

    Each ``"values":[...]`` array is cut out of the body (its points are only numbers and
    quoted numbers; a label value cannot contain that text unescaped) and all are parsed at
    once by :func:`_points`; the rest, labels and status, is small and goes through ``json``.
    Any answer :func:`to_frame` accepts parses here to the same numbers, bit for bit.
    """
    chunks: list[bytes] = []
    parts: list[bytes] = []
    pos = 0
    while True:
        at = payload.find(_VALUES, pos)
        if at < 0:
            break
        begin = at + len(_VALUES)
        stop = begin if payload[begin : begin + 1] == b"]" else payload.find(b"]]", begin) + 1
        if stop <= 0:
            break
        parts.append(payload[pos:begin])
        chunks.append(payload[begin:stop])
        pos = stop
    parts.append(payload[pos:])
    data = _data(b"".join(parts), url, what)
    kind = data.get("resultType") if isinstance(data, dict) else None
    result = data.get("result", []) if isinstance(data, dict) else []
    if kind not in ("matrix", "vector") or not isinstance(result, list):
        raise PrometheusError(url, None, "a matrix or vector result", repr(kind))
    if kind == "matrix" and len(chunks) != sum("values" in item for item in result):
        # not the compact JSON Prometheus writes (spaces after colons): read it all as JSON
        chunks = []
        result = _data(payload, url, what).get("result", [])
    parsed = _points(chunks) if chunks else None
    out: list[RawSeries] = []
    index = 0
    for item in result:
        labels = item.get("metric", {})
        if type(labels) is not dict or not set(map(type, labels.values())) <= {str}:
            labels = {str(k): str(v) for k, v in dict(labels).items()}  # JSON keys are str
        if kind == "vector":
            point = item.get("value")
            if point:
                t, v = np.array([float(point[0])]), np.array([float(point[1])])
                out.append(RawSeries(labels, t, v))
            continue
        if "values" not in item:
            continue
        chunk = chunks[index] if chunks else None
        index += 1
        if parsed is not None:
            ts, vs = parsed[index - 1]
        else:  # not the plain shape: this chunk alone, else json, one object per point
            alone = _points([chunk]) if chunk is not None else None
            if alone is not None:
                ts, vs = alone[0]
            else:
                raw = item["values"] if chunk is None else json.loads(b"[" + chunk + b"]")
                pts = np.array([[float(t), float(v)] for t, v in raw], dtype=np.float64)
                pts = pts.reshape(len(raw), 2)
                ts, vs = pts[:, 0].copy(), pts[:, 1].copy()
        if len(ts):
            out.append(RawSeries(labels, ts, vs))
    return out


def merge_series(
    pieces: Iterable[Sequence[RawSeries]], start: float = -math.inf, end: float = math.inf
) -> list[RawSeries]:
    """Join the answers of several pieces: one series per label set (sorted by labels), its
    points in time order, each timestamp once (the first piece's point wins), in [start, end].

    An answer that came in one piece (label sets unique, timestamps strictly increasing in
    every series: what Prometheus sends) only needs the range check and the sort by labels
    (:func:`_merge_one`); a series wholly in range is returned as it came, arrays shared.
    """
    pieces = [piece for piece in pieces if len(piece)]
    if len(pieces) == 1:
        fast = _merge_one(pieces[0], start, end)
        if fast is not None:
            return fast
    by_key: dict[tuple[tuple[str, str], ...], list[RawSeries]] = {}
    for piece in pieces:
        for s in piece:
            by_key.setdefault(s.key(), []).append(s)
    out: list[tuple[tuple[tuple[str, str], ...], RawSeries]] = []
    for key, parts in by_key.items():
        ts = np.concatenate([p.timestamps for p in parts])
        values = np.concatenate([p.values for p in parts])
        order = np.argsort(ts, kind="stable")
        ts, values = ts[order], values[order]
        keep = (ts >= start) & (ts <= end)
        if len(ts) > 1:
            keep[1:] &= ts[1:] != ts[:-1]
        if keep.any():
            out.append((key, RawSeries(dict(key), ts[keep], values[keep])))
    return _by_labels(out)


def _by_labels(out: list[tuple[tuple[tuple[str, str], ...], RawSeries]]) -> list[RawSeries]:
    """The series sorted by their label values, name by name (a missing label sorts as "")."""
    names = sorted({k for key, _ in out for k, _ in key})
    if all(len(key) == len(names) for key, _ in out):  # the same names everywhere
        out.sort(key=lambda pair: pair[0])  # so (name, value) pairs order as the values do
    else:
        out.sort(key=lambda pair: tuple(dict(pair[0]).get(n, "") for n in names))
    return [s for _, s in out]


def _merge_one(piece: Sequence[RawSeries], start: float, end: float) -> list[RawSeries] | None:
    """:func:`merge_series` of one piece whose label sets are unique and whose series are
    each strictly increasing in time, checked for all series at once (one array of every
    timestamp); None when it is not such a piece."""
    keys = [s.key() for s in piece]
    if len(set(keys)) != len(keys):
        return None
    lengths = np.fromiter((len(s.timestamps) for s in piece), np.intp, len(piece))
    ts = np.concatenate([s.timestamps for s in piece])
    edges = np.cumsum(lengths)
    rising = ts[1:] > ts[:-1]  # NaN and equal neighbours are not
    rising[edges[(edges > 0) & (edges < len(ts))] - 1] = True  # from a series to the next
    if not rising.all():
        return None
    inside = (ts >= start) & (ts <= end)
    if inside.all():
        kept = lengths
    else:  # points in range per series
        below = np.concatenate([[0], np.cumsum(inside)])
        kept = below[edges] - below[edges - lengths]
    out: list[tuple[tuple[tuple[str, str], ...], RawSeries]] = []
    for key, s, n, k in zip(keys, piece, lengths.tolist(), kept.tolist(), strict=True):
        if k == n and k and tuple(s.labels.items()) == key:
            out.append((key, s))
        elif k == n and k:
            out.append((key, RawSeries(dict(key), s.timestamps, s.values)))
        elif k:
            mask = (s.timestamps >= start) & (s.timestamps <= end)
            out.append((key, RawSeries(dict(key), s.timestamps[mask], s.values[mask])))
    return _by_labels(out)
