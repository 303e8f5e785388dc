"""The Prometheus client against a tiny local HTTP server (retries, refusals, splitting, auth)
and a recorded VictoriaMetrics answer; the node_exporter arithmetic against the agent's."""

from __future__ import annotations

import gzip
import json
import math
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nodeexporter_reference import summed_rates, telemetry

from minerwatch.features.procs import TOP_PROCESSES
from minerwatch.features.rates import rate, summed_rate
from minerwatch.features.sources.cpu import CpuTimes, cpu_shares
from minerwatch.service.fleet.nodeexporter import (
    MAPPING,
    NOT_WHOLE_DISK,
    READ_PLANS,
    VIRTUAL_INTERFACES,
    Points,
    counter_rates,
    cpu_percentages,
    host_matcher,
    host_of,
    promql_regex,
    selector_matchers,
    telemetry_series,
)
from minerwatch.service.fleet.promclient import (
    MAX_POINTS,
    Connection,
    PromClient,
    PrometheusError,
    PrometheusUnavailable,
    RawSeries,
    merge_series,
    parse_series,
    to_frame,
)

ROOT = Path(__file__).resolve().parent.parent

#: An answer as VictoriaMetrics sends it: integer timestamps, isPartial and stats beside data.
VICTORIAMETRICS_ANSWER = {
    "status": "success",
    "isPartial": False,
    "data": {
        "resultType": "matrix",
        "result": [
            {
                "metric": {"__name__": "node_load1", "instance": "web-1:9100", "job": "node"},
                "values": [[1767571200, "0.5"], [1767571215, "0.75"], [1767571230, "NaN"]],
            },
            {
                "metric": {"__name__": "node_load1", "instance": "db-1:9100"},
                "values": [[1767571200.5, "2"]],
            },
        ],
    },
    "stats": {"seriesFetched": "2", "executionTimeMsec": 1},
}


class Server:
    """Answers each request with the next of ``answers`` ((status, body) or a callable)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = self.rfile.read(length).decode() if length else url.query
                params = urllib.parse.parse_qs(form)
                outer.requests.append((url.path, params, dict(self.headers)))
                answer = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                if callable(answer):
                    answer = answer(params)
                status, body = answer
                if status == "sleep":
                    time.sleep(body)
                    status, body = 200, VICTORIAMETRICS_ANSWER
                data = json.dumps(body).encode()
                packed = isinstance(status, str) and status.startswith("gzip")
                if packed:  # ("gzip <code>", body), or "gzip-cut <code>": cut short on the way
                    kind, code = status.split()
                    data, status = gzip.compress(data), int(code)
                    if kind == "gzip-cut":
                        data = data[: len(data) // 2]
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if packed:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(*answers):
        servers.append(Server(answers))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def client(url, **kw):
    kw.setdefault("sleep", lambda s: None)
    return PromClient(Connection(url, timeout=kw.pop("timeout", 5.0)), **kw)


def test_victoriametrics_answer_becomes_a_long_frame():
    frame = to_frame(VICTORIAMETRICS_ANSWER["data"])
    assert list(frame.columns) == ["__name__", "instance", "job", "timestamp", "value"]
    assert frame["timestamp"].tolist() == [1767571200.0, 1767571215.0, 1767571230.0, 1767571200.5]
    assert frame["value"].tolist()[:2] == [0.5, 0.75] and math.isnan(frame["value"][2])
    assert frame["instance"].tolist() == ["web-1:9100"] * 3 + ["db-1:9100"]
    assert frame["job"].tolist() == ["node"] * 3 + [""]  # a label a series lacks is empty
    assert frame["instance"].dtype == "category"


def _frame_of(series: list[RawSeries]):
    """RawSeries as to_frame would give them: label columns, timestamp, value."""
    return to_frame(
        {
            "resultType": "matrix",
            "result": [
                {
                    "metric": s.labels,
                    "values": [
                        [t, repr(v)]
                        for t, v in zip(s.timestamps.tolist(), s.values.tolist(), strict=True)
                    ],
                }
                for s in series
            ],
        }
    )


@pytest.mark.parametrize("compact", [True, False])
def test_parse_series_reads_what_to_frame_reads(compact):
    answer = json.loads(json.dumps(VICTORIAMETRICS_ANSWER))
    answer["data"]["result"].append(  # odd values, and label text that looks like the values
        {
            "metric": {"__name__": "x", "note": '"values":[[1,"2"]]'},
            "values": [[1767571200.123, "+Inf"], [1767571201, "-Inf"], [1767571202, "1e-07"]],
        }
    )
    answer["data"]["result"].append({"metric": {"__name__": "empty"}, "values": []})
    separators = (",", ":") if compact else (", ", ": ")
    series = parse_series(json.dumps(answer, separators=separators).encode())
    frame = to_frame(answer["data"])
    assert [s.labels for s in series] == [r["metric"] for r in answer["data"]["result"][:3]]
    ts = np.concatenate([s.timestamps for s in series])
    values = np.concatenate([s.values for s in series])
    np.testing.assert_array_equal(ts, frame["timestamp"].to_numpy())
    np.testing.assert_array_equal(values, frame["value"].to_numpy())  # NaN equal to NaN
    vector = {"resultType": "vector", "result": [{"metric": {"a": "b"}, "value": [5, "0.25"]}]}
    got = parse_series(json.dumps({"status": "success", "data": vector}).encode())
    assert got[0].labels == {"a": "b"} and got[0].values.tolist() == [0.25]
    with pytest.raises(PrometheusError, match="bad_data"):
        parse_series(b'{"status":"error","errorType":"bad_data","error":"parse error"}')


def test_merge_series_joins_pieces_sorted_by_labels_without_duplicates():
    a = RawSeries({"d": "b"}, np.array([0.0, 10.0]), np.array([1.0, 2.0]))
    b = RawSeries({"d": "a"}, np.array([5.0]), np.array([3.0]))
    c = RawSeries({"d": "b"}, np.array([10.0, 20.0, 30.0]), np.array([9.0, 4.0, 5.0]))
    got = merge_series([[a, b], [c]], start=0.0, end=20.0)
    assert [s.labels for s in got] == [{"d": "a"}, {"d": "b"}]
    assert got[1].timestamps.tolist() == [0.0, 10.0, 20.0]
    assert got[1].values.tolist() == [1.0, 2.0, 4.0]  # the first piece's point wins


def test_5xx_is_retried_with_backoff_then_succeeds(serve):
    srv = serve((503, {"status": "error"}), (502, "bad gateway"), (200, VICTORIAMETRICS_ANSWER))
    waits = []
    c = client(srv.url, sleep=waits.append, backoff=0.5)
    frame = c.query("node_load1", 1767571230)
    assert len(frame) == 4 and c.requests == 3
    assert len(waits) == 2 and 0.25 <= waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0


def test_5xx_that_persists_is_unavailable(serve):
    srv = serve((500, {"status": "error", "errorType": "internal", "error": "boom"}))
    c = client(srv.url, retries=2)
    with pytest.raises(PrometheusUnavailable, match="boom"):
        c.query("up", 0)
    assert c.requests == 3


def test_timeouts_are_retried(serve):
    srv = serve(("sleep", 1.0), (200, VICTORIAMETRICS_ANSWER))
    c = client(srv.url, timeout=0.3)
    assert len(c.query("up", 0)) == 4
    assert c.requests == 2


def test_gzip_is_asked_for_only_when_set_and_a_damaged_answer_is_retried(serve):
    srv = serve(("gzip-cut 200", VICTORIAMETRICS_ANSWER), ("gzip 200", VICTORIAMETRICS_ANSWER))
    c = PromClient(Connection(srv.url, timeout=5.0, gzip=True), sleep=lambda s: None)
    assert len(c.query("node_load1", 1767571230)) == 4 and c.requests == 2
    assert all(h.get("Accept-Encoding") == "gzip" for _, _, h in srv.requests)
    assert 0 < c.received < 2 * len(json.dumps(VICTORIAMETRICS_ANSWER))
    plain = serve((200, VICTORIAMETRICS_ANSWER))
    client(plain.url).query("node_load1", 1767571230)
    assert plain.requests[0][2].get("Accept-Encoding", "identity") == "identity"


def test_a_gzip_refusal_still_names_the_query_and_the_reason(serve):
    srv = serve(("gzip 400", {"status": "error", "errorType": "bad_data", "error": "parse error"}))
    c = PromClient(Connection(srv.url, timeout=5.0, gzip=True), sleep=lambda s: None)
    with pytest.raises(PrometheusError, match="parse error") as refused:
        c.query("rate(x[", 0)
    assert "rate(x[" in str(refused.value) and c.requests == 1


def test_4xx_is_refused_at_once_naming_the_query(serve):
    body = {"status": "error", "errorType": "bad_data", "error": "1:5: parse error"}
    srv = serve((400, body))
    c = client(srv.url)
    with pytest.raises(PrometheusError) as err:
        c.query_range('rate(x{job="a"[5m])', 0, 60, 15)
    assert c.requests == 1
    assert 'rate(x{job="a"[5m])' in str(err.value) and "bad_data" in str(err.value)
    assert "?" not in str(err.value).split(":", 2)[1]  # no query string in the location


def test_unreachable_server_is_a_usage_error():
    c = client("http://127.0.0.1:9", retries=1)  # discard port: nothing listens
    with pytest.raises(PrometheusError, match="reachable Prometheus"):
        c.query("up", 0)


def test_query_range_is_split_to_at_most_11000_points(serve):
    def answer(params):
        start, end = float(params["start"][0]), float(params["end"][0])
        step = float(params["step"][0].rstrip("s"))
        n = int(round((end - start) / step)) + 1
        values = [[start + i * step, "1"] for i in range(n)]
        return 200, {
            "status": "success",
            "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]},
        }

    srv = serve(answer)
    c = client(srv.url, concurrency=3)
    frame = c.query_range("up", 1000.0, 1000.0 + 15 * 30_000, 15)
    points = []
    for _, params, _ in srv.requests:
        start, end = float(params["start"][0]), float(params["end"][0])
        points.append(int(round((end - start) / 15)) + 1)
    assert max(points) <= MAX_POINTS and len(points) == 3
    ts = frame["timestamp"].to_numpy()
    np.testing.assert_array_equal(np.sort(ts), 1000.0 + 15 * np.arange(30_001))


def test_raw_samples_are_read_in_pieces_without_duplicates(serve):
    def answer(params):
        at = float(params["time"][0])
        ms = int(re.search(r"\[(\d+)ms\]$", params["query"][0]).group(1))
        ts = [t for t in range(0, 100_000, 10) if at - ms / 1000 <= t <= at]
        values = [[t, str(t)] for t in ts]
        return 200, {
            "status": "success",
            "data": {"resultType": "matrix", "result": [{"metric": {"a": "b"}, "values": values}]},
        }

    srv = serve(answer)
    c = client(srv.url, max_points=1000)
    frame = c.samples('m{a="b"}', 0, 99_990, 10.0)
    assert len(srv.requests) == 10
    np.testing.assert_array_equal(frame["timestamp"].to_numpy(), np.arange(0, 100_000, 10))
    series = c.samples_series('m{a="b"}', 0, 99_990, 10.0)
    assert len(srv.requests) == 20 and len(series) == 1 and series[0].labels == {"a": "b"}
    np.testing.assert_array_equal(series[0].timestamps, np.arange(0, 100_000, 10))
    np.testing.assert_array_equal(series[0].values, np.arange(0, 100_000, 10))


def test_basic_auth_and_bearer_token_files(serve, tmp_path):
    srv = serve((200, VICTORIAMETRICS_ANSWER))
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "token").write_text("tok-1\n")
    PromClient(Connection(srv.url, username="mw", password_file=str(tmp_path / "pw"))).query(
        "up", 0
    )
    assert srv.requests[-1][2]["Authorization"] == "Basic bXc6czNjcmV0"
    PromClient(Connection(srv.url, bearer_token_file=str(tmp_path / "token"))).query("up", 0)
    assert srv.requests[-1][2]["Authorization"] == "Bearer tok-1"
    with pytest.raises(PrometheusError, match="bearer-token-file"):
        PromClient(Connection(srv.url, bearer_token_file=str(tmp_path / "nope"))).query("up", 0)


def test_bad_ca_file_is_refused_before_any_request(tmp_path):
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(PrometheusError, match="PEM"):
        PromClient(Connection("https://127.0.0.1:1", ca_file=str(tmp_path / "ca.pem")))


# -- the mapping -----------------------------------------------------------------------------


def test_host_and_selector_helpers():
    assert host_of("web-1:9100") == "web-1" and host_of("[::1]:9100") == "::1"
    assert host_of("plain") == "plain"
    assert selector_matchers("") == "" and selector_matchers('{job="node"}') == 'job="node"'
    with pytest.raises(Exception, match="--selector"):
        selector_matchers('job="node"')
    assert re.fullmatch(json.loads(host_matcher("a.b", None).split("=~")[1]), "a.b:9100")
    assert not re.fullmatch(json.loads(host_matcher("a.b", None).split("=~")[1]), "axb:9100")
    assert host_matcher("h", "node") == 'node="h"'


counters = st.lists(st.floats(0, 1e12, allow_nan=False), min_size=2, max_size=30)


@given(counters)
def test_counter_rates_is_the_agents_rate(values):
    ts = np.arange(len(values), dtype=float) * 15
    got = counter_rates(np.zeros(len(values), dtype=np.intp), ts, np.array(values))
    want = [math.nan] + [rate(a, b, 15.0) for a, b in zip(values, values[1:], strict=False)]
    np.testing.assert_array_equal(got, want)


@given(st.lists(st.tuples(counters, st.integers(0, 5)), min_size=1, max_size=4))
def test_summed_rates_is_the_agents_summed_rate(devices):
    ts = np.arange(30, dtype=float) * 10
    ids, times, values, readings = [], [], [], [dict() for _ in ts]
    for d, (vals, offset) in enumerate(devices):
        for k, v in enumerate(vals):
            i = k + offset
            if i < len(ts):
                ids.append(d)
                times.append(ts[i])
                values.append(v)
                readings[i][d] = v
    got = summed_rates(np.array(ids), np.array(times), np.array(values), ts)
    for i in range(1, len(ts)):
        primed = any(d in readings[i - 1] for d in readings[i])
        want = summed_rate(readings[i - 1], readings[i], 10.0) if primed else math.nan
        np.testing.assert_allclose(got[i], want, rtol=1e-12, equal_nan=True)


def test_cpu_percentages_match_the_agents_shares():
    prev = CpuTimes(100, 10, 50, 800, 20, 5, 5, 7)
    cur = CpuTimes(160, 15, 80, 880, 30, 7, 8, 99)
    modes = {
        m: np.array([getattr(prev, m), getattr(cur, m)], dtype=float)
        for m in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    }
    got = cpu_percentages(modes)
    want = cpu_shares(prev, cur)
    for column, value in want.items():
        assert got[column][1] == pytest.approx(value)
    assert all(math.isnan(v[0]) for v in got.values())


def test_virtual_interfaces_partitions_and_steal_do_not_count():
    import pandas as pd

    def frame(rows, **labels):
        out = pd.DataFrame(rows, columns=["timestamp", "value"])
        for k, v in labels.items():
            out[k] = v
        return out

    t = [[0.0, 1e6], [10.0, 1e6 + 1000]]
    frames = {
        "node_load1": frame([[0.0, 1.0], [10.0, 2.0]]),
        "node_network_receive_bytes_total": pd.concat(
            [frame(t, device=d) for d in ("eth0", "lo", "veth12", "docker0", "br-1f")]
        ),
        "node_disk_read_bytes_total": pd.concat(
            [frame(t, device=d) for d in ("nvme0n1", "nvme0n1p1", "dm-0", "sda", "sda2")]
        ),
    }
    data = telemetry("h", frames)
    # the first scrape has no earlier reading: no rate (NaN), never a zero
    assert data.series.column("net_rx_bps")[1:].tolist() == [100.0]  # eth0 only
    assert math.isnan(data.series.column("net_rx_bps")[0])
    assert data.series.column("disk_read_bps")[1:].tolist() == [200.0]  # nvme0n1 + sda
    assert "cpu_percent" in data.absent and "top_proc_cpu_percent" in data.absent


def test_server_side_filters_are_the_mappings_own():
    """The matchers Prometheus applies drop exactly the series the mapping drops."""
    devices = ["sda", "sda1", "nvme0n1", "nvme0n1p2", "dm-0", "md127", "loop3", "vda", "xvdb",
               "mmcblk0", "mmcblk0p1", "eth0", "ens5", "lo", "veth1a", "docker0", "br-x",
               "cali9", "wlan0", "bond0", "tun0", "", "lo0"]  # fmt: skip
    for pattern in (NOT_WHOLE_DISK, VIRTUAL_INTERFACES):
        promql = promql_regex(pattern)
        for d in devices:  # PromQL matchers are anchored at both ends
            assert bool(re.fullmatch(promql, d)) == bool(pattern.match(d)), (pattern, d)
    cpu = READ_PLANS["node_cpu_seconds_total"]
    assert cpu.keeps({"mode": "steal"}) and not cpu.keeps({"mode": "guest"})
    assert READ_PLANS["node_network_receive_bytes_total"].matchers() == (
        f"device!~{json.dumps(promql_regex(VIRTUAL_INTERFACES))}",
    )


def _random_host(rng: np.random.Generator, gaps: bool = True) -> dict[str, list[RawSeries]]:
    """Raw samples of one host with what the mapping must get right: devices to drop,
    counter resets, series that start late or skip scrapes (unless not ``gaps``: then every
    series has a sample at every scrape), process groups, CPU modes."""
    ts = 1000.0 + 15.0 * np.arange(60)

    def series(labels: dict[str, str], scale: float, counter: bool = True) -> RawSeries:
        values = np.cumsum(rng.random(60) * scale) if counter else rng.random(60) * scale
        if counter and rng.random() < 0.5:
            values[rng.integers(5, 55) :] -= values[30]  # a reset
        keep = rng.random(60) > (0.1 if gaps else -1.0)  # missed scrapes
        keep[: rng.integers(0, 10) if gaps else 0] = False  # a late start
        return RawSeries(labels, ts[keep], values[keep])

    out: dict[str, list[RawSeries]] = {
        "node_load1": [series({}, 4.0, counter=False)],
        "node_memory_MemTotal_bytes": [RawSeries({}, ts, np.full(60, 8e9))],
        "node_memory_MemAvailable_bytes": [series({}, 8e9, counter=False)],
        "node_cpu_seconds_total": [
            series({"cpu": str(c), "mode": m}, 10.0)
            for c in range(3)
            for m in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
        ],
        "node_disk_read_bytes_total": [
            series({"device": d}, 1e6) for d in ("dm-0", "nvme0n1", "sda", "sda1")
        ],
        "node_network_receive_bytes_total": [
            series({"device": d}, 1e5) for d in ("docker0", "eth0", "lo", "wlan0")
        ],
        "node_context_switches_total": [series({}, 1e4)],
        "namedprocess_namegroup_cpu_seconds_total": [
            series({"groupname": g, "mode": m}, 1.0)
            for g in ("a", "b", "c")
            for m in ("system", "user", "wait")
        ],
    }
    for name, items in out.items():  # as merge_series orders them (and samples sorts rows)
        items.sort(key=lambda s: tuple(sorted(s.labels.items())))
        out[name] = [
            RawSeries({"__name__": name, **s.labels}, s.timestamps, s.values) for s in items
        ]
    return out


@pytest.mark.parametrize("gaps", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_telemetry_series_is_telemetry_of_frames(seed, gaps):
    """The numpy mapping read_host uses gives the frame mapping's rows, bit for bit (with
    gaps, and without: every series at every scrape, the scrape times' short cut)."""
    raw = _random_host(np.random.default_rng(seed), gaps)
    frames = {name: _frame_of(items) for name, items in raw.items()}
    for frame in frames.values():
        del frame["__name__"]
    want = telemetry("h", frames, since=1100.0, procs=True)
    got = telemetry_series("h", raw, since=1100.0, procs=True)
    assert got.absent == want.absent and got.series.columns == want.series.columns
    np.testing.assert_array_equal(got.series.timestamps, want.series.timestamps)
    np.testing.assert_array_equal(got.series.values, want.series.values)
    assert got.procs is not None and want.procs is not None
    np.testing.assert_array_equal(got.procs.timestamps, want.procs.timestamps)
    np.testing.assert_array_equal(got.procs.names, want.procs.names)
    np.testing.assert_array_equal(got.procs.cpu, want.procs.cpu)


def test_scrape_times_take_the_short_cut_only_when_every_series_has_every_scrape(monkeypatch):
    from minerwatch.service.fleet import nodeexporter

    full = _random_host(np.random.default_rng(7), gaps=False)
    points = {name: Points.of(name, items) for name, items in full.items()}
    node = [p for name, p in points.items() if not name.startswith("namedprocess")]
    want = np.unique(np.concatenate([p.ts for p in node]))
    with monkeypatch.context() as m:  # every series has every scrape: no sort of them all
        m.setattr(nodeexporter.np, "unique", None)
        np.testing.assert_array_equal(nodeexporter._scrape_times(node), want)
    ts = node[0].ts

    variants = [  # one series one scrape short, one scrape late, one extra, a late series
        Points(np.zeros(len(ts) - 1, np.intp), ts[:-1], ts[:-1]),
        Points(np.zeros(len(ts), np.intp), np.r_[ts[:-1], ts[-1] + 1.0], ts),
        Points(np.zeros(len(ts) + 1, np.intp), np.r_[ts, ts[-1] + 15.0], np.r_[ts, 0.0]),
        Points(np.array([0] * len(ts) + [1] * 3), np.r_[ts, ts[-3:]], np.r_[ts, ts[-3:]]),
        Points(np.zeros(len(ts), np.intp), ts, ts),  # and one more like the rest
    ]
    for extra in variants:
        for where in (0, len(node)):
            parts = [*node[:where], extra, *node[where:]]
            want = np.unique(np.concatenate([p.ts for p in parts]))
            np.testing.assert_array_equal(nodeexporter._scrape_times(parts), want)


def test_process_rows_keep_the_busiest_groups_and_break_ties_as_the_reference():
    """More groups than a row keeps, several with the same rate, a scrape missed: the array
    process table is the reference's, row for row (names in the same order)."""
    ts = 1000.0 + 15.0 * np.arange(8)
    proc = "namedprocess_namegroup_cpu_seconds_total"
    groups = [f"g{i:02d}" for i in range(TOP_PROCESSES + 4)]
    raw: dict[str, list[RawSeries]] = {
        "node_load1": [RawSeries({"__name__": "node_load1"}, ts, np.ones(8))],
        proc: [],
    }
    for i, g in enumerate(groups):
        for mode in ("system", "user"):
            per_s = 0.5 if i % 3 else 0.25 * (i % 2)  # many equal rates, some zero
            keep = np.arange(8) != (5 if i == 2 else -1)  # one group misses a scrape
            values = 100.0 + per_s * (ts - ts[0])
            labels = {"__name__": proc, "groupname": g, "mode": mode}
            raw[proc].append(RawSeries(labels, ts[keep], values[keep]))
    raw[proc].sort(key=lambda s: tuple(sorted(s.labels.items())))
    frames = {name: _frame_of(items) for name, items in raw.items()}
    for frame in frames.values():
        del frame["__name__"]
    want = telemetry("h", frames, procs=True).procs
    got = telemetry_series("h", raw, procs=True).procs
    assert got is not None and want is not None
    assert len(want.timestamps) == 7 * TOP_PROCESSES  # every scrape but the first, full
    np.testing.assert_array_equal(got.timestamps, want.timestamps)
    np.testing.assert_array_equal(got.names, want.names)
    np.testing.assert_array_equal(got.cpu, want.cpu)
    np.testing.assert_array_equal(got.pids, want.pids)


def test_a_metric_whose_series_the_filters_all_drop_is_nan_not_absent():
    ts = np.array([0.0, 10.0])
    raw = {
        "node_load1": [RawSeries({}, ts, np.array([1.0, 2.0]))],
        "node_network_receive_bytes_total": [],
    }
    got = telemetry_series("h", raw, present=["node_network_receive_bytes_total"])
    assert "net_rx_bps" in got.series.columns and "net_rx_bps" not in got.absent
    assert np.isnan(got.series.column("net_rx_bps")).all()
    assert "net_rx_bps" in telemetry_series("h", raw).absent


def test_datasets_readme_prints_the_mapping():
    text = (ROOT / "datasets/README.md").read_text()
    section = text[text.index("## 4. Fleet mode") :]
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", section, re.M)
    assert [r[0] for r in rows] == [c.name for c in MAPPING]
    for (_, metrics), column in zip(rows, MAPPING, strict=True):
        assert re.findall(r"`(\w+)`", metrics) == list(column.metrics)
