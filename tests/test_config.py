"""Agent config: defaults < file < flags, and errors that point at the right line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from entry import run, usage_error

from minerwatch.features.errors import InputError
from minerwatch.service.cli import build_parser, main
from minerwatch.service.config import (
    OPTIONS,
    SECTIONS,
    AgentConfig,
    ExporterConfig,
    RespondConfig,
    ThrottleConfig,
    add_option_flags,
    config_fields,
    config_from_args,
    dump_config,
    load_config,
    overrides_from_args,
)
from minerwatch.service.units import format_duration, format_size, parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "deploy" / "minerwatch.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "minerwatch.toml"
    path.write_text(text)
    return path


def error_of(path: Path | None, overrides: dict | None = None) -> InputError:
    with pytest.raises(InputError) as info:
        load_config(path, overrides or {})
    return info.value


def test_defaults():
    cfg = load_config(None, {})
    assert cfg == AgentConfig()
    assert cfg.interval == 10.0 and cfg.window == 60.0 and cfg.hop == 60.0
    assert cfg.learn_for == cfg.retrain_every == 86400.0
    assert cfg.retrain_history == cfg.history_retention == 14 * 86400.0
    assert cfg.history_max_bytes == 256 * 1024 * 1024
    assert cfg.data_dir == Path("/var/lib/minerwatch")
    assert cfg.host == socket.gethostname()
    assert cfg.alert_windows == 3
    assert cfg.event_log == Path("/var/lib/minerwatch/events.jsonl")
    assert cfg.evidence_dir == Path("/var/lib/minerwatch/evidence")
    assert cfg.exporter == ExporterConfig(10091, "::", None, None)
    assert cfg.throttle == ThrottleConfig(state_dir=Path("/var/lib/minerwatch/throttle"))
    assert cfg.throttle.release_cpu_percent == 70.0 and cfg.throttle.cpu_percent == 90.0
    assert not cfg.throttle.enabled and cfg.throttle.method == "auto"
    assert cfg.throttle.allow_names == ()


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AgentConfig().interval = 5.0  # type: ignore[misc]


def test_file_overrides_defaults_and_derived_defaults_follow(tmp_path):
    path = write(
        tmp_path,
        """
[agent]
interval = 5
window = "2m"
data_dir = "/srv/mw"
host = "web-01"
history_max_bytes = "1GiB"

[exporter]
port = 9999
web_config = "/etc/minerwatch/web.yml"

[throttle]
enabled = true
hold = "1m30s"
allow_names = ["backup-*", "postgres"]
method = "sigstop"
""",
    )
    cfg = load_config(path, {})
    assert cfg.interval == 5.0 and cfg.window == 120.0
    assert cfg.hop == 120.0  # follows window
    assert cfg.event_log == Path("/srv/mw/events.jsonl")  # follows data_dir
    assert cfg.evidence_dir == Path("/srv/mw/evidence")
    assert cfg.host == "web-01"
    assert cfg.history_max_bytes == 1 << 30
    assert cfg.exporter.port == 9999 and cfg.exporter.address == "::"
    assert cfg.throttle.state_dir == Path("/srv/mw/throttle")  # follows data_dir
    assert cfg.exporter.web_config == Path("/etc/minerwatch/web.yml")
    assert cfg.throttle.enabled and cfg.throttle.hold == 90.0
    assert cfg.throttle.allow_names == ("backup-*", "postgres")
    assert cfg.throttle.method == "sigstop"
    assert cfg.learn_for == 86400.0  # untouched options keep defaults


def test_flags_override_file(tmp_path):
    path = write(tmp_path, '[agent]\ninterval = "5s"\nwindow = "30s"\n[exporter]\nport = 9999\n')
    cfg = load_config(
        path,
        {
            "window": "40s",
            "exporter.port": "9100",
            "interval": None,
            "throttle.enabled": True,
            "throttle.allow_users": "backup, www",
        },
    )
    assert cfg.interval == 5.0  # None = flag not given: the file wins
    assert cfg.window == 40.0
    assert cfg.exporter.port == 9100
    assert cfg.throttle.enabled
    assert cfg.throttle.allow_users == ("backup", "www")


def serve_args(argv):
    return build_parser().parse_args(["serve", *argv])


def test_argparse_flags_round_trip(tmp_path):
    args = serve_args(
        [
            "--interval",
            "2s",
            "--window",
            "20s",
            "--port",
            "9200",
            "--throttle",
            "--throttle-cpu",
            "95",
            "--throttle-allow-name",
            "a",
            "--throttle-allow-name",
            "b, c",
            "--no-throttle-dry-run",
        ]
    )
    over = overrides_from_args(args)
    assert args.config is None and "agent.hop" not in over
    cfg = config_from_args(args)
    assert (cfg.interval, cfg.window, cfg.exporter.port) == (2.0, 20.0, 9200)
    assert cfg.throttle.enabled and cfg.throttle.cpu_percent == 95.0
    assert cfg.throttle.allow_names == ("a", "b", "c") and cfg.throttle.dry_run is False


def flag_of(parser, dest):
    return next(a for a in parser._actions if a.dest == dest)


def test_every_option_has_a_flag_that_shows_its_default():
    parser = argparse.ArgumentParser()
    add_option_flags(parser)
    for name in config_fields():
        action = flag_of(parser, name)
        assert action.default is None, name  # not given = the config file wins
        assert "(default: " in action.help and "(default: )" not in action.help, name


def test_every_option_round_trips_through_its_flag(tmp_path):
    """A config where every option differs from its default, given as flags only."""
    cfg = AgentConfig(
        interval=2.0,
        window=20.0,
        hop=10.0,
        learn_for=60.0,
        retrain_every=0.0,
        retrain_history=3600.0,
        data_dir=tmp_path,
        host="h",
        alert_windows=2,
        sustain_windows=5,
        alert_margin=1.5,
        alarms_per_week=2.5,
        event_log=tmp_path / "ev.jsonl",
        evidence_dir=tmp_path / "evd",
        history_retention=7200.0,
        history_max_bytes=2 << 20,
        model_key=tmp_path / "model.key",
        auth_log=tmp_path / "auth.log",
        log_dir=tmp_path / "logs",
        logrotate_status=tmp_path / "lr.status",
        exporter=ExporterConfig(
            port=9, address="127.0.0.1", web_config=tmp_path / "w.yml", textfile_dir=tmp_path / "tf"
        ),
        throttle=ThrottleConfig(
            enabled=True,
            cpu_percent=80.0,
            hold=5.0,
            release_cpu_percent=75.0,
            release_hold=6.0,
            dry_run=True,
            only_when_alert=True,
            max_targets=1,
            min_proc_cpu_percent=1.0,
            quota_percent=20.0,
            method="sigstop",
            allow_names=("a",),
            allow_users=("u", "v"),
            allow_units=("x.service",),
            cgroup_root=tmp_path / "cg",
            state_dir=tmp_path / "st",
        ),
        respond=RespondConfig(
            isolate=True,
            isolate_dry_run=True,
            ioc_dir=tmp_path / "ioc",
            ioc_every=30.0,
            host_root=tmp_path / "root",
        ),
    )
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    argv = []
    for section, options in OPTIONS.items():
        obj = cfg if section == "agent" else getattr(cfg, section)
        defaults = SECTIONS[section]() if section != "agent" else AgentConfig()
        for key in options:
            value = getattr(obj, key)
            assert value != getattr(defaults, key), f"{section}.{key} is at its default"
            flags = flag_of(serve, f"{section}.{key}").option_strings
            if isinstance(value, bool):
                argv.append(flags[0] if value else flags[1])
            elif isinstance(value, tuple):
                argv += [part for name in value for part in (flags[0], name)]
            else:
                argv += [flags[0], str(value)]
    assert config_from_args(parser.parse_args(["serve", *argv])) == cfg


def test_bad_flag_names_the_flag():
    err = error_of(None, {"interval": "soon"})
    assert err.path == "--interval" and err.line is None
    assert "duration" in err.expected and err.got == '"soon"'
    assert error_of(None, {"exporter.port": "70000"}).path == "--port"
    assert error_of(None, {"throttle.hold": "-1s"}).path == "--throttle-hold"
    err = error_of(None, {"throttle.cpu_percent": "lots"})
    assert err.path == "--throttle-cpu" and err.expected.startswith("--throttle-cpu to be")


def test_release_level_follows_the_trigger_unless_set(tmp_path):
    """``serve --throttle --throttle-cpu 50`` used to fail on the old fixed release level."""
    assert config_from_args(serve_args(["--throttle", "--throttle-cpu", "50"])).throttle == (
        ThrottleConfig(
            enabled=True,
            cpu_percent=50.0,
            release_cpu_percent=30.0,
            state_dir=Path("/var/lib/minerwatch/throttle"),
        )
    )
    assert ThrottleConfig(cpu_percent=10.0).release_cpu_percent == 5.0  # at least half
    path = write(tmp_path, "[throttle]\ncpu_percent = 60\n")
    assert load_config(path).throttle.release_cpu_percent == 40.0
    path = write(tmp_path, "[throttle]\nrelease_cpu_percent = 45\n")
    assert load_config(path, {"throttle.cpu_percent": "50"}).throttle.release_cpu_percent == 45


def test_relation_errors_name_the_real_flags(tmp_path):
    err = error_of(None, {"throttle.cpu_percent": "50", "throttle.release_cpu_percent": "70"})
    assert err.path == "--throttle-release-cpu"
    assert err.expected == "--throttle-release-cpu <= --throttle-cpu (50)"
    assert err.got == "--throttle-release-cpu = 70"
    path = write(tmp_path, "[throttle]\n\nrelease_cpu_percent = 70\n")
    err = error_of(path, {"throttle.cpu_percent": "50"})
    assert (err.path, err.line) == (str(path), 3)  # where the explicit release level is
    assert err.expected == "release_cpu_percent <= --throttle-cpu (50)"


@pytest.mark.parametrize(
    ("text", "line", "expected", "got"),
    [
        ('[agent]\ninterval = "5s"\nintreval = "5s"\n', 3, 'did you mean "interval"', '"intreval"'),
        ("[agent]\n\n[agnet]\nx = 1\n", 3, 'did you mean "agent"', "[agnet]"),
        ("[agent]\n[metrics]\nport = 1\n", 2, "a section: agent, exporter, throttle", "[metrics]"),
        (
            '[exporter]\naddress = "::"\nport = "10091"\n',
            3,
            "an integer from 0 to 65535",
            '"10091"',
        ),
        ("[exporter]\nport = 65536\n", 2, "an integer from 0 to 65535", "65536"),
        ('[agent]\nwindow = "60s"\nlearn_for = "a day"\n', 3, "a duration", '"a day"'),
        ('[agent]\n# c\ninterval = "-10s"\n', 3, "a duration", '"-10s"'),
        ("[agent]\ninterval = 0\n", 2, "agent.interval to be a duration", "0"),
        ('[agent]\nhistory_max_bytes = "lots"\n', 2, "a size", '"lots"'),
        ('[throttle]\nenabled = "yes"\n', 2, "true or false", '"yes"'),
        ('[throttle]\nmethod = "nice"\n', 2, '"auto", "cgroup2"', '"nice"'),
        ('[throttle]\nallow_names = "xmrig"\n', 2, "a list of strings", '"xmrig"'),
        ("[throttle]\ncpu_percent = 150\n", 2, "a number above 0 and at most 100", "150"),
        ("agent = 3\n", 1, "a table [agent]", "3"),
        (
            '[agent]\ninterval = "10s"\nwindow = "5s"\n',
            3,
            "window >= interval (10s)",
            "window = 5s",
        ),
        ('[agent]\nhop = "2m"\n', 2, "interval <= hop <= window", "hop = 2m"),
        (
            '[agent]\nhistory_retention = "1d"\n',
            2,
            "history_retention >= retrain_history",
            "history_retention = 24h",
        ),
        (
            "[throttle]\n\nrelease_cpu_percent = 95.0\n",
            3,
            "release_cpu_percent <= cpu_percent",
            "release_cpu_percent = 95",
        ),
    ],
)
def test_bad_values_are_reported_at_their_line(tmp_path, text, line, expected, got):
    path = write(tmp_path, text)
    err = error_of(path)
    assert err.path == str(path)
    assert err.line == line, str(err)
    assert expected in err.expected, str(err)
    assert err.got == got
    assert str(err).startswith(f"{path}:{line}: expected ")


def test_first_bad_key_in_the_file_is_reported(tmp_path):
    # Two errors in two sections; the earlier line wins whatever the dict order is.
    path = write(tmp_path, '[throttle]\nhold = "x"\n[agent]\ninterval = "y"\n[agent.extra]\n')
    assert error_of(path).line == 2


def test_relation_uses_the_flag_when_the_flag_broke_it(tmp_path):
    path = write(tmp_path, '[agent]\ninterval = "10s"\n')
    err = error_of(path, {"window": "5s"})
    assert err.path == "--window" and "window >= interval" in err.expected


def test_inline_table_and_dotted_keys_get_lines(tmp_path):
    path = write(tmp_path, '# x\nagent = { interval = "5s", widow = "1m" }\n')
    err = error_of(path)
    assert err.line == 2 and err.got == '"widow"'
    path = write(tmp_path, '\nagent.interval = "5s"\nagent.windw = 3\n')
    assert error_of(path).line == 3


def test_syntax_error_uses_tomllib_line(tmp_path):
    path = write(tmp_path, '[agent]\ninterval = "10s"\nwindow "60s"\n')
    err = error_of(path)
    assert err.line == 3 and err.expected == "valid TOML"
    assert "column" in err.got


def test_unreadable_and_non_utf8_files(tmp_path):
    err = error_of(tmp_path / "missing.toml")
    assert err.line is None and "readable" in err.expected
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[agent]\nhost = "caf\xe9"\n')
    err = error_of(path)
    assert err.line == 2 and err.expected == "UTF-8 text"


def test_shipped_example_equals_defaults_and_documents_every_option():
    assert load_config(SHIPPED, {}) == AgentConfig()
    text = SHIPPED.read_text()
    for section, options in OPTIONS.items():
        assert re.search(rf"^\[{section}\]$", text, re.M), section
        for key in options:
            # every option appears, set to its default or commented out with an example
            assert re.search(rf"^(# )?{key} = ", text, re.M), f"{section}.{key} not documented"


def test_shipped_example_values_are_the_defaults_even_commented_out():
    """A commented-out option's example must be its default where the default is fixed."""
    text = SHIPPED.read_text()
    cfg = AgentConfig(data_dir=Path("/var/lib/minerwatch"))
    for key in ("hop", "event_log", "evidence_dir", "release_cpu_percent", "state_dir"):
        m = re.search(rf"^# {key} = (.*)$", text, re.M)
        assert m, key
        value = m.group(1).strip('"')
        if key == "hop":
            assert parse_duration(value) == cfg.hop
        elif key == "release_cpu_percent":
            assert float(value) == cfg.throttle.release_cpu_percent
        elif key == "state_dir":
            assert Path(value) == cfg.throttle.state_dir
        else:
            assert Path(value) == getattr(cfg, key)


def test_dump_round_trips(tmp_path):
    cfg = AgentConfig(
        interval=2.5,
        window=90.0,
        hop=30.0,
        host='we"ird\thost',
        history_max_bytes=3 * 1024 * 1024 + 1,
        exporter=ExporterConfig(textfile_dir=Path("/var/lib/node/text")),
        throttle=ThrottleConfig(enabled=True, allow_units=("a.service",)),
    )
    path = write(tmp_path, dump_config(cfg))
    assert load_config(path, {}) == cfg


def test_config_fields_cover_the_dataclasses():
    sections = {"exporter", "throttle", "respond"}
    names = {f.name for f in dataclasses.fields(AgentConfig)} - sections
    assert {k for s, k in (f.split(".") for f in config_fields()) if s == "agent"} == names
    assert set(OPTIONS["exporter"]) == {f.name for f in dataclasses.fields(ExporterConfig)}
    assert set(OPTIONS["throttle"]) == {f.name for f in dataclasses.fields(ThrottleConfig)}
    assert set(OPTIONS["respond"]) == {f.name for f in dataclasses.fields(RespondConfig)}
    assert list(SECTIONS) == list(OPTIONS)


def test_the_throttle_section_is_the_controllers_config():
    throttle = pytest.importorskip("minerwatch.service.throttle")
    assert throttle.ThrottleConfig is ThrottleConfig
    cfg = AgentConfig(throttle=ThrottleConfig(enabled=True, hold=5.0, release_hold=7.0))
    assert cfg.throttle.state_dir == cfg.data_dir / "throttle"
    own = AgentConfig(throttle=ThrottleConfig(state_dir=Path("/elsewhere")))
    assert own.throttle.state_dir == Path("/elsewhere")  # explicit wins over the derived one


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("24h", 86400.0),
        ("14d", 1209600.0),
        ("45", 45.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1w", 604800.0),
        (12, 12.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    "text", ["", "x", "10 minutes", "-1s", "1m1h", "nan", "inf", "5y", True, None, [1]]
)
def test_parse_duration_rejects(text):
    with pytest.raises(InputError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256MiB", 256 << 20),
        ("1GiB", 1 << 30),
        ("512", 512),
        ("4KiB", 4096),
        ("1MB", 10**6),
        (1024, 1024),
        ("2 GiB", 2 << 30),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize("text", ["", "MiB", "1.5.5MiB", "12 parsecs", "-1", 1.5, True])
def test_parse_size_rejects(text):
    with pytest.raises(InputError):
        parse_size(text)


def test_config_check_ok_and_bad(tmp_path, capsys):
    assert main(["config", "check", str(SHIPPED)]) == 0
    assert capsys.readouterr().out.strip() == f"{SHIPPED}: OK"
    bad = write(tmp_path, "[agent]\nwindow = 5\ninterval = 10\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"minerwatch: error: {bad}:2: expected window >= interval (10s)")


BAD_NAMED_FILES = {
    "not a bcrypt hash": (
        "basic_auth_users:\n  prometheus: notahash\n",
        None,
        ["web.yml:2: expected a bcrypt hash for user 'prometheus'"],
    ),
    "missing certificate": (
        "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: nowhere.key\n",
        None,
        ["web.yml:2: expected a readable PEM certificate and matching key"],
    ),
    "missing web config": (None, None, ["web.yml: expected a readable UTF-8 web config file"]),
    "missing model key": ("", "missing.key", ["missing.key: expected a readable model key file"]),
}


@pytest.mark.parametrize("case", BAD_NAMED_FILES)
def test_config_check_refuses_what_serve_refuses_at_start(tmp_path, case):
    """``config check`` reads the web config and the model key as ``serve`` does at start: it
    said OK of a config whose agent then exited 2 (and the unit did not restart it)."""
    web, key, words = BAD_NAMED_FILES[case]
    if web is not None:
        (tmp_path / "web.yml").write_text(web)
    text = f'[exporter]\nweb_config = "{tmp_path / "web.yml"}"\n'
    if key is not None:
        text = f'[agent]\nmodel_key = "{tmp_path / key}"\n'
    config = write(tmp_path, text)
    usage_error(run("config", "check", config), *words)
    usage_error(
        run("serve", "--config", config, "--port", "0", "--address", "127.0.0.1",
            "--data-dir", tmp_path / "data", "--learn-for", "2m", timeout=60),
        *words,
    )  # fmt: skip


def test_config_check_accepts_good_named_files(tmp_path):
    bcrypt = pytest.importorskip("bcrypt")
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  prometheus: {hashed}\n")
    key = tmp_path / "model.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    config = write(
        tmp_path,
        f'[agent]\nmodel_key = "{key}"\n[exporter]\nweb_config = "{tmp_path / "web.yml"}"\n',
    )
    r = run("config", "check", config)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, f"{config}: OK", "")


def test_relative_paths_in_the_file_are_relative_to_its_folder(tmp_path):
    """systemd starts the agent in ``/``: ``data_dir = "data"`` written beside the file meant
    ``/data`` there and the working folder by hand. Paths in the file are relative to its
    folder, as in the web config; paths in flags to the working folder."""
    bcrypt = pytest.importorskip("bcrypt")
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    etc.mkdir()
    elsewhere.mkdir()
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    (etc / "web.yml").write_text(f"basic_auth_users:\n  prometheus: {hashed}\n")
    config = etc / "mw.toml"
    config.write_text('[agent]\ndata_dir = "data"\n[exporter]\nweb_config = "web.yml"\n')
    shown = run("config", "show", "../etc/mw.toml", cwd=elsewhere)
    assert shown.returncode == 0, shown.stderr
    assert f'data_dir = "{etc / "data"}"' in shown.stdout, shown.stdout
    assert f'web_config = "{etc / "web.yml"}"' in shown.stdout, shown.stdout
    checked = run("config", "check", "../etc/mw.toml", cwd=elsewhere)  # reads etc/web.yml
    assert (checked.returncode, checked.stderr) == (0, ""), checked.stderr
    assert not (elsewhere / "web.yml").exists()


@pytest.mark.parametrize("who", ["everyone", "a group"])
def test_a_config_others_can_write_is_refused(tmp_path, who):
    """The agent runs as root and its config decides what it throttles, isolates and trusts:
    a file others can edit (deploy/README.md: "writable by root alone") is refused by
    ``serve`` and by ``config check``, as a model key others can read is."""
    config = write(tmp_path, SHIPPED.read_text())
    if who == "everyone":
        config.chmod(0o666)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to give the file to root and another group")
        os.chown(config, 0, 65534)
        config.chmod(0o664)
    words = [f"{config}: expected a config file only its owner can write (chmod go-w"]
    usage_error(run("config", "check", config), *words)
    usage_error(
        run("serve", "--config", config, "--port", "0", "--address", "127.0.0.1",
            "--data-dir", tmp_path / "data", timeout=60),
        *words,
    )  # fmt: skip
    assert not (tmp_path / "data").exists()
    config.chmod(0o644)
    assert run("config", "check", config).returncode == 0


def test_config_show_prints_effective_toml(tmp_path, capsys):
    path = write(tmp_path, '[agent]\ninterval = "5s"\n')
    assert main(["config", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert 'interval = "5s"' in out and "port = 10091" in out
    assert load_config(write(tmp_path, out), {}) == load_config(path, {})
    assert main(["config", "show"]) == 0
    assert load_config(write(tmp_path, capsys.readouterr().out), {}) == AgentConfig()


UNIT = ROOT / "deploy" / "minerwatch.service"


def test_systemd_unit_matches_the_config():
    text = UNIT.read_text()
    assert re.search(
        r"^ExecStart=/usr/local/bin/minerwatch serve --config "
        r"/etc/minerwatch/minerwatch.toml$",
        text,
        re.M,
    )
    state = re.search(r"^StateDirectory=(\S+)$", text, re.M).group(1)
    cfg = AgentConfig()
    assert Path("/var/lib") / state == cfg.data_dir
    writable = [Path(p) for p in re.search(r"^ReadWritePaths=(.*)$", text, re.M).group(1).split()]
    for path in (cfg.history_path, cfg.event_log, cfg.evidence_dir, cfg.throttle.state_dir):
        assert any(path.is_relative_to(w) for w in writable), path  # (cgroups: test_unit_file)


def test_systemd_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    # The binary is not installed here: point the unit at /bin/true so verify checks the rest.
    unit = tmp_path / "minerwatch.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/minerwatch", "/bin/true"))
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
