"""The README's test command runs the tests in two passes: those marked ``this_host`` one
after another, the others two at a time (``-n 2``). A test that runs an agent on this host,
or starts processes an agent would judge (burners, disguised miners, processes to throttle
or isolate), must not run beside another: an agent watches the whole host, so another
test's "miner" running beside it became its suspect (its own evidence file and event line),
and another test's burner took its CPU."""

from __future__ import annotations

import signal
from types import FrameType

import pytest


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A handler that does nothing: ignored here, yet the default again in a child."""


# Run as a shell's background job (CI's own run ignores SIGINT) or under ``nohup`` (SIGHUP),
# the tests' commands inherited those signals ignored, and a command keeps a signal its
# starter ignores ignored: the tests that stop one with Ctrl-C or a closed terminal's SIGHUP
# would then see it run on. A handler, unlike SIG_IGN, is reset to the default by exec, so the
# commands start as from a terminal while this process still ignores both. (A test of the
# ``nohup`` case ignores SIGHUP in its child itself.)
for _signum in (signal.SIGINT, signal.SIGHUP):
    if signal.getsignal(_signum) is signal.SIG_IGN:
        signal.signal(_signum, _ignore)

#: Modules whose tests watch or change this host's processes (``serve`` on the real /proc,
#: ``collect``, the throttle, isolation, hunts, burners and disguised processes).
ON_THIS_HOST = frozenset(
    {
        "test_agent.py",
        "test_agent_e2e.py",
        "test_agent_throttle.py",
        "test_agent_upgrade.py",
        "test_alertmanager.py",
        "test_cli.py",
        "test_cli_contract.py",
        "test_collect_stop.py",
        "test_collector.py",
        "test_config.py",
        "test_config_limits.py",
        "test_dismiss.py",
        "test_evidence.py",
        "test_exporter.py",
        "test_faults.py",
        "test_hostile_input.py",
        "test_hostsignals.py",
        "test_incident_flow.py",
        "test_indicators.py",
        "test_ioc.py",
        "test_ioc_watch.py",
        "test_isolate.py",
        "test_isolate_agent.py",
        "test_isolate_pid_reuse.py",
        "test_packages.py",
        "test_procs_agent.py",
        "test_proctable.py",
        "test_report.py",
        "test_report_persistence.py",
        "test_scrape_load.py",
        "test_stop_signal.py",
        "test_sources.py",
        "test_throttle.py",
        "test_throttle_agent_restart.py",
        "test_throttle_journal.py",
        "test_throttle_release.py",
        "test_unit_file.py",
        "test_webconfig.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in ON_THIS_HOST:
            item.add_marker(pytest.mark.this_host)
