import re
from pathlib import Path

from minerwatch.service.exporter import METRICS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_metric_list_matches_the_exporter():
    listed = set(re.findall(r"^\| `(minerwatch_\w+)`", README, re.M))
    assert listed == set(METRICS)


def test_readme_test_command_is_what_ci_runs():
    blocks = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    assert blocks[1].strip() == ".venv/bin/python -m pytest -q"
    assert blocks[1].strip() in (ROOT / ".ci/run").read_text()
