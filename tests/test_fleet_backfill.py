"""The fleet backfill: batched one-pass promtool runs and the settle step give Prometheus the
same samples as one promtool run per host with its default 2-hour blocks (the old way)."""

from __future__ import annotations

from pathlib import Path

import pytest
from promtools import PROMETHEUS, PROMTOOL, require, started_prometheus

from minerwatch.bench.fleet_backfill import backfill, block_ranges, overlapping, settle
from minerwatch.bench.simulate import simulate

HOUR_MS = 3_600_000


def test_overlapping_is_about_any_two_neighbours() -> None:
    assert not overlapping([])
    assert not overlapping([(0, 10)])
    assert not overlapping([(0, 10), (10, 20)])  # maxTime is exclusive in Prometheus
    assert overlapping([(0, 10), (9, 20)])
    assert overlapping([(0, 10), (10, 20), (15, 16)])


def samples(root: Path, tsdb: Path, at: float) -> dict[tuple[tuple[str, str], ...], list]:
    """Every raw sample of the last two days before ``at``, by series."""
    root.mkdir()
    with started_prometheus(root, tsdb) as prom:
        answer = prom.api("query", query='{__name__=~".+"}[2d]', time=str(at))
    assert answer["status"] == "success", answer
    return {tuple(sorted(r["metric"].items())): r["values"] for r in answer["data"]["result"]}


@pytest.mark.slow
@pytest.mark.prometheus
def test_batched_backfill_reads_back_as_one_promtool_run_per_host(tmp_path: Path) -> None:
    require(PROMETHEUS)
    promtool = require(PROMTOOL)
    data = tmp_path / "sim"
    labels = simulate(data, hosts=3, train_days=1.0, test_days=0.0, seed=5, procs=False)
    at = labels["end"] + 60
    # an older promtool, which does not know the hidden flag: the backfill must fall back
    old_promtool = tmp_path / "promtool-old"
    old_promtool.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in --max-block-duration*)\n'
        "  echo \"promtool: error: unknown long flag '$a', try --help\" >&2; exit 1;; esac; done\n"
        f'exec {promtool} "$@"\n'
    )
    old_promtool.chmod(0o755)
    old = tmp_path / "old"
    assert backfill(data, ["train"], old, str(old_promtool), hosts_per_block=1) == sorted(
        labels["hosts"]
    )
    old_blocks = block_ranges(old)
    assert len(old_blocks) >= 3 * 12  # a day of each host in 2-hour blocks
    assert all(hi - lo <= 2 * HOUR_MS for lo, hi in old_blocks)

    new = tmp_path / "new"
    hosts = backfill(data, ["train"], new, promtool, jobs=2, hosts_per_block=2)
    assert hosts == sorted(labels["hosts"])
    new_blocks = block_ranges(new)
    assert len(new_blocks) == 2 and overlapping(new_blocks)  # hosts 1-2, host 3: same day

    want = samples(tmp_path / "p-old", old, at)
    assert len(want) == 3 * 46  # every series of the mapping's 46 per simulated host
    assert samples(tmp_path / "p-new", new, at) == want

    assert settle(new, poll=1.0) == 1  # Prometheus merged them, and the samples stayed
    assert not overlapping(block_ranges(new)) and len(block_ranges(new)) == 1
    assert samples(tmp_path / "p-settled", new, at) == want
