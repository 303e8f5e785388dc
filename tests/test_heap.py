"""roomy_heap: in a process started with MALLOC_TRIM_THRESHOLD_ (as Dask's nanny starts its
workers) large arrays stop costing a fresh zero-filled mapping each, and afterwards the
process gives its memory back as before. Counted in page faults, not timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minerwatch.baseline import heap

PROBE = r"""
import json, resource, sys
import numpy as np
from minerwatch.baseline.heap import roomy_heap

def faults(rounds=200):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        a = np.ones(1 << 19)  # 4 MiB: above a pinned 128 KiB mmap threshold
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()

faults(5)
outside = faults()
rss0 = rss()
with roomy_heap():
    inside = faults()
    kept = [np.ones(1 << 17) for _ in range(64)]  # 64 x 1 MiB on the heap, then freed
    del kept
    rss_in = rss()
after = faults()
print(json.dumps({"outside": outside, "inside": inside, "after": after,
                  "rss0": rss0, "rss_in": rss_in, "rss_after": rss()}))
"""


def probe(env: dict[str, str]) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(heap._glibc() is None, reason="glibc's mallopt is what this is about")
def test_a_pinned_heap_is_roomy_inside_and_restored_and_trimmed_after() -> None:
    got = probe({**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"})
    # pinned: every 4 MiB array is a fresh mapping (~500 page faults each here)
    assert got["outside"] > 200 * 250, got
    # inside: the heap keeps the freed array and hands it out again
    assert got["inside"] < got["outside"] / 20, got
    # after: the worker's setting is back (fresh mappings again) ...
    assert got["after"] > got["outside"] / 2, got
    # ... and what the task freed was given back to the OS
    assert got["rss_in"] - got["rss0"] > 32 << 20, got
    assert got["rss_after"] - got["rss0"] < 16 << 20, got


@pytest.mark.skipif(heap._glibc() is None, reason="glibc's mallopt is what this is about")
def test_nothing_changes_where_the_threshold_was_not_pinned() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    got = probe(env)
    # glibc's dynamic threshold: after the first free the array comes from the heap anyway
    assert got["outside"] < 200 * 100, got
    assert got["after"] < 200 * 100, got


def test_without_the_variable_mallopt_is_not_called(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class Fake:
        def mallopt(self, *_: int) -> int:
            calls.append("mallopt")
            return 1

        def malloc_trim(self, *_: int) -> int:
            calls.append("trim")
            return 1

    monkeypatch.setattr(heap, "_glibc", lambda: Fake())
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with heap.roomy_heap():
        pass
    assert calls == []
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "not a number")
    with heap.roomy_heap():
        pass
    assert calls == []
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with pytest.raises(RuntimeError):
        with heap.roomy_heap():
            raise RuntimeError("a failing task still restores the worker's heap")
    assert calls == ["mallopt", "mallopt", "mallopt", "mallopt", "trim"]


def _worker_probe() -> dict[str, object]:
    import numpy as np  # noqa: F401 - as a task would have it

    from minerwatch.baseline.heap import roomy_heap

    with roomy_heap():
        pass
    return {"trim": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


@pytest.mark.slow
def test_dask_nanny_still_pins_the_threshold_in_its_workers() -> None:
    """The premise: if Dask stops setting the variable, roomy_heap is no longer needed."""
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        got = client.submit(_worker_probe, pure=False).result()
    assert got["trim"] is not None and int(str(got["trim"])) <= 1 << 20, got
