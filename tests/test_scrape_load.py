"""The real agent under scrape load: 50 concurrent scrapers for 30 s (issue 9, item 6).

``minerwatch serve`` runs as a subprocess with a 1 s interval while fifty clients in other
processes scrape ``/metrics`` back to back, each over a fresh connection with Prometheus'
headers. The bounds are the issue's: p99 scrape latency under 100 ms on this machine, and
sampling keeps its interval. That is judged on the agent's own record, not on the test's
clock: the scrapes just before and just after the load give its sample counter and the stamp
of its latest sample, and history.db must hold exactly the samples it counted between those
two stamps, at its interval (within one sample), none two intervals after the one before,
and the latest no older than two intervals when each of those scrapes was answered. The
benchmark behind it, ``python -m minerwatch.bench.scrape_load``, prints the same figures for
any client count.
"""

from __future__ import annotations

import numpy as np
import pytest

from minerwatch.bench.scrape_load import (
    agent_span,
    load_with_sampling_check,
    running_agent,
    stored_samples,
)

INTERVAL = 1.0
CLIENTS = 50
SECONDS = 30.0


@pytest.mark.slow
def test_fifty_scrapers_for_thirty_seconds_neither_slow_scrapes_nor_sampling(tmp_path):
    with running_agent(tmp_path, INTERVAL) as agent:
        result = load_with_sampling_check(agent.url, CLIENTS, SECONDS, INTERVAL, agent.pid)
    # the agent has stopped: everything it sampled is in history.db
    first, last = result.first_sample_ts, result.last_sample_ts
    assert first is not None and last is not None and result.samples_taken is not None
    assert result.started_at is not None and result.ended_at is not None
    stamps = stored_samples(tmp_path / "history.db", *agent_span(result))
    every = stored_samples(tmp_path / "history.db", None, None)
    report = (
        f"{result}\nstored, seconds after the load's start: "
        f"{np.round(np.array(every) - result.started_at, 3).tolist()}\n"
        f"agent log:\n{(tmp_path / 'agent.log').read_text()[-2000:]}"
    )
    assert result.failures == 0, report
    assert result.requests > CLIENTS * SECONDS, report  # more than one scrape/s per client
    assert result.p99_ms < 100.0, report
    # every sample the agent counted during the load is stored (the first stamp is the
    # sample it had already taken when the load began)
    assert stamps[0] == pytest.approx(first, abs=1e-6)
    assert stamps[-1] == pytest.approx(last, abs=1e-6)
    assert len(stamps) - 1 == result.samples_taken, report
    # at its interval: a tick is stamped when it starts on a drift-free schedule, so on pace
    # the samples taken span as many intervals, give or take one
    assert abs(result.samples_taken - (last - first) / INTERVAL) <= 1, report
    assert max(np.diff(stamps)) < 2 * INTERVAL, report
    # and it was still sampling at the end of the load, not catching up afterwards
    assert result.started_at - first < 2 * INTERVAL, report
    assert result.ended_at - last < 2 * INTERVAL, report
