"""Web config (exporter-toolkit format): parsing, basic auth and TLS over real connections."""

from __future__ import annotations

import base64
import http.client
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from promtools import free_port, full_snapshot, promtool, running_prometheus, scrape_job
from test_fleet_serve import MINERWATCH, _start

from minerwatch.features.errors import InputError
from minerwatch.service.exporter import Exporter
from minerwatch.service.webconfig import BasicAuth, load_web_config, parse_subset_yaml

bcrypt = pytest.importorskip("bcrypt")

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def password_hash() -> str:
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("tls")
    crt, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(crt), "-subj", "/CN=minerwatch-test",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return crt, key


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def request(port, headers=None, context=None, path="/metrics"):
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def serve():
    started = []

    def start(config: Path) -> Exporter:
        exp = Exporter(port=0, address="127.0.0.1", registry=CollectorRegistry(), web_config=config)
        exp.start()
        exp.update(full_snapshot(1_700_000_000.0))
        started.append(exp)
        return exp

    yield start
    for exp in started:
        exp.stop()


# --- parsing -------------------------------------------------------------------------------


def test_parses_the_supported_subset_with_comments_and_quotes(tmp_path, password_hash):
    config = write(
        tmp_path / "web.yml",
        "---\n# comment\n"
        "tls_server_config:\n"
        "  cert_file: certs/server.crt   # trailing comment\n"
        "  key_file: 'certs/server key.pem'\n"
        '  "min_version": "TLS13"\n'
        "\n"
        "basic_auth_users:\n"
        f"  prometheus: {password_hash}\n"
        f"  'other user': '{password_hash}'\n",
    )
    cfg = load_web_config(config)
    assert cfg.cert_file == tmp_path / "certs" / "server.crt"
    assert cfg.key_file == tmp_path / "certs" / "server key.pem"
    assert cfg.min_version == "TLS13"
    assert cfg.client_auth_type == "NoClientCert"
    assert set(cfg.users) == {"prometheus", "other user"}
    assert cfg.users["prometheus"] == password_hash.encode()


def test_empty_sections_mean_plain_http_without_auth(tmp_path):
    cfg = load_web_config(write(tmp_path / "w.yml", "tls_server_config:\nbasic_auth_users: {}\n"))
    assert cfg.ssl_context() is None and cfg.authenticator() is None


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("tls_server_config:\n  - cert_file: a\n", 2, "lists are not supported"),
        ("tls_server_config:\n\tcert_file: a\n", 2, "spaces"),
        ("tls_server_config:\n  cert_file:\n    nested: a\n", 2, "a scalar value"),
        ("tls_server_config:\n  cert_file: a\n    key_file: b\n", 3, "indentation"),
        ("tls_server_config:\n  cert_file: [a, b]\n", 2, "plain scalar"),
        ("tls_server_config:\n  cert_file: 'a\n", 2, "closing '"),
        ("tls_server_config:\n  cert_file: a\n  cert_file: b\n", 3, "only once"),
        ("tls_server_config: a\n", 1, "indented map"),
        ("  cert_file: a\n", 1, "top-level"),
        ("http_server_config:\n  http2: true\n", 1, "tls_server_config, basic_auth_users"),
        ("tls_server_config:\n  cert_file: a\n  ciphers: x\n", 3, "a key among"),
        ("tls_server_config:\n  cert_file: a\n", 2, "both cert_file and key_file"),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAny\n",
            4,
            "one of NoClientCert",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n"
            "  client_auth_type: RequireAndVerifyClientCert\n",
            4,
            "client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
            4,
            "client_auth_type to go with client_ca_file",
        ),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: SSL3\n", 4, "TLS12"),
        ("basic_auth_users:\n  alice: plaintext-password\n", 2, "a bcrypt hash for user 'alice'"),
    ],
)
def test_errors_name_the_line_and_what_was_expected(tmp_path, text, line, expected):
    path = write(tmp_path / "web.yml", text)
    with pytest.raises(InputError) as info:
        load_web_config(path)
    assert info.value.path == str(path)
    assert info.value.line == line
    assert expected in str(info.value)


def test_unreadable_cert_is_an_input_error_at_its_line(tmp_path):
    path = write(tmp_path / "w.yml", "tls_server_config:\n  cert_file: nope.crt\n  key_file: k\n")
    with pytest.raises(InputError) as info:
        load_web_config(path).ssl_context()
    assert info.value.line == 2 and "PEM certificate" in info.value.expected


def test_parser_decodes_double_quoted_escapes():
    doc = parse_subset_yaml('a:\n  b: "x\\"y\\\\z"  # c\n', "f")
    assert doc["a"]["b"].value == 'x"y\\z'
    assert doc["a"]["b"].line == 2


# --- basic auth ------------------------------------------------------------------------------


def test_basic_auth_over_http(tmp_path, serve, password_hash):
    exp = serve(write(tmp_path / "w.yml", f"basic_auth_users:\n  prometheus: {password_hash}\n"))
    status, _, body = request(exp.port, basic("prometheus", PASSWORD))
    assert status == 200 and b"minerwatch_anomaly_score" in body
    for headers in (
        {},
        basic("prometheus", "wrong"),
        basic("nobody", PASSWORD),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Bearer abc"},
    ):
        status, response_headers, body = request(exp.port, headers)
        assert status == 401, headers
        assert response_headers["WWW-Authenticate"].startswith("Basic realm=")
        assert b"minerwatch" not in body
    # Authentication comes before routing: unknown paths do not leak their existence.
    assert request(exp.port, path="/other")[0] == 401
    assert request(exp.port, basic("prometheus", PASSWORD), path="/other")[0] == 404


class CountingBcrypt:
    def __init__(self):
        self.calls = 0

    def checkpw(self, password: bytes, hashed: bytes) -> bool:
        self.calls += 1
        return bcrypt.checkpw(password, hashed)


def test_successful_checks_are_cached_failures_are_not(password_hash):
    counting = CountingBcrypt()
    auth = BasicAuth({"prometheus": password_hash.encode()}, counting)
    assert auth.check("prometheus", PASSWORD) and auth.check("prometheus", PASSWORD)
    assert counting.calls == 1
    assert not auth.check("prometheus", "wrong") and not auth.check("prometheus", "wrong")
    assert counting.calls == 3
    assert not auth.check("stranger", PASSWORD)
    assert counting.calls == 3


# --- TLS -------------------------------------------------------------------------------------


def test_tls_scrape_with_a_self_signed_certificate(tmp_path, serve, cert, password_hash):
    crt, key = cert
    config = write(
        tmp_path / "web.yml",
        f"tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n"
        f"basic_auth_users:\n  prometheus: {password_hash}\n",
    )
    promtool("check", "web-config", str(config))
    exp = serve(config)
    trusting = ssl.create_default_context(cafile=str(crt))
    status, _, body = request(exp.port, basic("prometheus", PASSWORD), context=trusting)
    assert status == 200 and b"minerwatch_anomaly_score 0.83" in body
    assert request(exp.port, basic("prometheus", "x"), context=trusting)[0] == 401
    with pytest.raises(ssl.SSLCertVerificationError):
        request(exp.port, context=ssl.create_default_context())  # untrusted self-signed cert
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        request(exp.port)  # plain HTTP to a TLS port gets no HTTP answer


def test_client_certificates_are_required_when_configured(tmp_path, serve, cert):
    crt, key = cert
    config = write(
        tmp_path / "web.yml",
        f"tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  client_ca_file: {crt}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n",
    )
    promtool("check", "web-config", str(config))
    assert load_web_config(config).client_auth_type == "RequireAndVerifyClientCert"
    exp = serve(config)
    with_cert = ssl.create_default_context(cafile=str(crt))
    with_cert.load_cert_chain(crt, key)
    assert request(exp.port, context=with_cert)[0] == 200
    without = ssl.create_default_context(cafile=str(crt))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(exp.port, context=without)


@pytest.mark.prometheus
def test_real_prometheus_scrapes_through_tls_and_basic_auth(tmp_path, serve, cert, password_hash):
    crt, key = cert
    config = write(
        tmp_path / "web.yml",
        f"tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n"
        f"basic_auth_users:\n  prometheus: {password_hash}\n",
    )
    exp = serve(config)
    secret = write(tmp_path / "password", PASSWORD)
    job = scrape_job(
        "minerwatch",
        exp.port,
        scheme="https",
        tls_config={"ca_file": str(crt)},
        basic_auth={"username": "prometheus", "password_file": str(secret)},
    )
    with running_prometheus(tmp_path, [job]) as prom:
        (sample,) = prom.wait_for('minerwatch_anomaly_score{job="minerwatch"}')
        assert float(sample["value"][1]) == 0.83


# --- a changed web config, under the real commands -------------------------------------------


def _make_cert(folder: Path, name: str) -> tuple[Path, Path]:
    crt, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(crt), "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return crt, key


def _until(what, timeout: float = 20.0):
    """``what()`` once it returns without an exception or a falsy value, else fail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = what()
            if got:
                return got
        except (OSError, ssl.SSLError, http.client.HTTPException) as err:
            got = err
        if time.monotonic() > deadline:
            pytest.fail(f"timed out; last: {got!r}")
        time.sleep(0.2)


def _install(src: tuple[Path, ...], live: tuple[Path, ...]) -> None:
    """Renew as certbot does: the new files replace the live names (rename, atomic)."""
    for new, name in zip(src, live, strict=True):
        tmp = name.with_suffix(".tmp")
        shutil.copyfile(new, tmp)
        tmp.replace(name)


def _renewal_is_served_without_a_restart(port: int, folder: Path, log: Path) -> None:
    b, c = _make_cert(folder, "cert-b"), _make_cert(folder, "cert-c")  # cert-a is live
    live = (folder / "live.crt", folder / "live.key")
    trust = {n: ssl.create_default_context(cafile=str(folder / f"cert-{n}.crt")) for n in "abc"}
    auth = basic("prometheus", PASSWORD)
    assert _until(lambda: request(port, auth, context=trust["a"])[0] == 200)
    assert _reloaded(port, auth, trust["a"]) == 1.0
    with pytest.raises(ssl.SSLCertVerificationError):
        request(port, auth, context=trust["b"])
    _install(b, live)  # the renewal
    assert _until(lambda: request(port, auth, context=trust["b"])[0] == 200)
    with pytest.raises(ssl.SSLCertVerificationError):
        request(port, auth, context=trust["a"])
    # half a renewal: C's certificate beside B's key does not load; B is still served
    _install(c[:1], live[:1])
    refused = "does not load, still serving with the previous one"
    assert _until(
        lambda: request(port, auth, context=trust["b"])[0] == 200 and refused in log.read_text()
    )
    assert _reloaded(port, auth, trust["b"]) == 0.0  # for the alert rule, before B expires
    assert log.read_text().count(refused) == 1  # said once, not at every scrape
    _install(c, live)  # the rest of it
    assert _until(lambda: request(port, auth, context=trust["c"])[0] == 200)
    assert _reloaded(port, auth, trust["c"]) == 1.0


def _reloaded(port: int, auth: dict[str, str], context: ssl.SSLContext) -> float:
    """``minerwatch_web_config_last_reload_successful`` as the server exports it."""
    status, _, body = request(port, auth, context=context)
    assert status == 200
    (line,) = [
        x for x in body.decode().splitlines()
        if x.startswith("minerwatch_web_config_last_reload_successful ")
    ]  # fmt: skip
    return float(line.split()[1])


def _web_config(folder: Path, password_hash: str, a: tuple[Path, Path]) -> Path:
    shutil.copyfile(a[0], folder / "live.crt")
    shutil.copyfile(a[1], folder / "live.key")
    return write(
        folder / "web.yml",
        "tls_server_config:\n  cert_file: live.crt\n  key_file: live.key\n"
        f"basic_auth_users:\n  prometheus: {password_hash}\n",
    )


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


def test_serve_takes_a_renewed_certificate_and_new_passwords_without_a_restart(
    tmp_path, password_hash
):
    """exporter-toolkit reads its web config for every request, so certbot's renewal or a
    changed password needs no restart of node_exporter & co; the agent did (it read the file
    once at start and served the old certificate until it expired)."""
    folder = tmp_path / "tls"
    folder.mkdir()
    config = _web_config(folder, password_hash, _make_cert(folder, "cert-a"))
    port, log = free_port(), tmp_path / "serve.log"
    proc = _start(
        [MINERWATCH, "serve", "--data-dir", str(tmp_path / "data"), "--port", str(port),
         "--address", "127.0.0.1", "--web-config", str(config), "--interval", "1s",
         "--window", "3s", "--learn-for", "30s"],
        log,
    )  # fmt: skip
    try:
        _renewal_is_served_without_a_restart(port, folder, log)
        # a new password: the old one is refused from then on, the new one let in
        other = bcrypt.hashpw(b"new secret", bcrypt.gensalt(rounds=4)).decode()
        text = config.read_text().replace(password_hash, other)
        tmp = config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(config)
        trusting = ssl.create_default_context(cafile=str(folder / "cert-c.crt"))
        new = basic("prometheus", "new secret")
        assert _until(lambda: request(port, new, context=trusting)[0] == 200)
        assert request(port, basic("prometheus", PASSWORD), context=trusting)[0] == 401
        assert "web config" in log.read_text() and "reloaded" in log.read_text()
    finally:
        _stop(proc, log)


def test_fleet_serve_takes_a_renewed_certificate_without_a_restart(tmp_path, password_hash):
    from test_fleet_churn import _fake, _serve, _train

    from minerwatch.baseline.store import save_model

    now = time.time()
    http_server = _fake(now, 1)
    url = f"http://127.0.0.1:{http_server.server_address[1]}"
    folder = tmp_path / "tls"
    folder.mkdir()
    config = _web_config(folder, password_hash, _make_cert(folder, "cert-a"))
    port, log = free_port(), tmp_path / "fleet.log"
    try:
        save_model(tmp_path / "models", _train(url, "h0000", now))
        proc, _ = _serve(
            url, tmp_path / "models", log, "--web-config", str(config), "--port", str(port)
        )
        try:
            _renewal_is_served_without_a_restart(port, folder, log)
        finally:
            _stop(proc, log)
    finally:
        http_server.shutdown()
