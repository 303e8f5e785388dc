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
    assert blocks[1].strip() == (
        '.venv/bin/python -m pytest -q -n 2 -m "not this_host"'
        " && .venv/bin/python -m pytest -q -m this_host"
    )
    assert blocks[1].strip() in (ROOT / ".ci/run").read_text()


def test_layout_names_every_module_in_the_tree():
    block = README[README.index("## Layout") :]
    block = block[: block.index("```", block.index("```") + 3)]
    named = set(re.findall(r"([a-z_]+\.py)", block))
    for folder in (
        "features",
        "features/sources",
        "baseline",
        "service",
        "service/fleet",
        "benchmarks",
    ):
        for path in (ROOT / folder).glob("*.py"):
            if path.name != "__init__.py":
                assert path.name in named, f"README Layout does not name {folder}/{path.name}"
    for name in named - {"__init__.py", "__main__.py", "base.py"}:
        assert list(ROOT.glob(f"*/{name}")) or list(ROOT.glob(f"*/*/{name}")), name
