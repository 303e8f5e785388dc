"""TLS and basic-auth settings in the web config format of the Prometheus Go exporters.

Operators already keep one ``web-config.yml`` for node_exporter & co (exporter-toolkit),
so the agent reads the same file rather than inventing flags. Only the useful subset is
supported, and PyYAML is not needed: the file is two top-level maps of scalars::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key
      client_ca_file: ca.crt         # optional: require client certificates
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':')

Anything outside that subset is an :class:`InputError` naming the line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from minerwatch.features.errors import InputError

log = logging.getLogger(__name__)

TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version")
SECTIONS = ("tls_server_config", "basic_auth_users")

#: exporter-toolkit client_auth_type -> ssl verify mode. RequestClientCert and
#: RequireAnyClientCert (ask for a certificate but do not verify it) have no equivalent in
#: Python's ssl module and are rejected rather than silently weakened or strengthened.
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}


@dataclass(frozen=True)
class Entry:
    """One scalar from the file with the line it came from, for error messages."""

    value: str
    line: int


def parse_subset_yaml(text: str, path: str) -> dict[str, dict[str, Entry] | None]:
    """Parse top-level keys that each hold a map of scalars (or nothing).

    >>> doc = parse_subset_yaml("a:\\n  b: 'x y'  # note\\nc:\\n", "f.yml")
    >>> doc["a"]["b"].value, doc["c"]
    ('x y', None)
    """
    doc: dict[str, dict[str, Entry] | None] = {}
    current: str | None = None  # top-level key whose indented children come next
    indent: int | None = None
    seen_content = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if lineno == 1:
            line = line.removeprefix("\ufeff")
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("\t"):
            raise InputError(path, lineno, "indentation with spaces", "a tab")
        if stripped in ("---", "...") and line == stripped:
            if stripped == "---" and seen_content:
                raise InputError(path, lineno, "a single YAML document", "'---'")
            continue
        seen_content = True
        depth = len(line) - len(stripped)
        key, rest = _split_key(stripped, path, lineno)
        if depth == 0:
            if key in doc:
                raise InputError(path, lineno, f"'{key}' only once", "a duplicate")
            value = _scalar(rest, path, lineno, allow_empty_map=True)
            if value is not None and value != "{}":
                raise InputError(path, lineno, f"'{key}:' followed by an indented map", repr(rest))
            doc[key] = {} if value == "{}" else None
            current = key if value is None else None
            indent = None
            continue
        if current is None:
            raise InputError(path, lineno, "a top-level 'key:' line", repr(stripped))
        if indent is None:
            indent = depth
            doc[current] = {}
        elif depth != indent:
            raise InputError(
                path, lineno, f"{indent} spaces of indentation (one level only)", f"{depth}"
            )
        section = doc[current]
        assert section is not None
        if key in section:
            raise InputError(path, lineno, f"'{key}' only once in '{current}'", "a duplicate")
        value = _scalar(rest, path, lineno, allow_empty_map=False)
        if value is None:
            raise InputError(path, lineno, f"a scalar value for '{key}'", "nothing")
        section[key] = Entry(value, lineno)
    return doc


def _split_key(stripped: str, path: str, lineno: int) -> tuple[str, str]:
    if stripped.startswith(("- ", "-\n")) or stripped == "-":
        raise InputError(path, lineno, "'key: value' (lists are not supported)", repr(stripped))
    if stripped[0] in "'\"":
        key, end = _quoted(stripped, path, lineno)
        rest = stripped[end:]
        if not rest.startswith(":"):
            raise InputError(path, lineno, "':' after the quoted key", repr(stripped))
        return key, rest[1:]
    colon = stripped.find(":")
    while colon != -1 and colon + 1 < len(stripped) and stripped[colon + 1] != " ":
        colon = stripped.find(":", colon + 1)
    if colon <= 0:
        raise InputError(path, lineno, "'key: value'", repr(stripped))
    return stripped[:colon].rstrip(), stripped[colon + 1 :]


def _scalar(rest: str, path: str, lineno: int, *, allow_empty_map: bool) -> str | None:
    """Plain or quoted scalar after ``key:``; ``None`` for an empty/null value."""
    text = rest.strip()
    if not text or text.startswith("#") or text in ("~", "null", "Null", "NULL"):
        return None
    if text[0] in "'\"":
        value, end = _quoted(text, path, lineno)
        tail = text[end:].strip()
        if tail and not tail.startswith("#"):
            raise InputError(path, lineno, "nothing after the closing quote", repr(tail))
        return value
    if " #" in text:
        text = text[: text.index(" #")].rstrip()
    if allow_empty_map and text == "{}":
        return text
    if text[0] in "[]{}&*!|>%@`," or ": " in text or text.endswith(":"):
        raise InputError(path, lineno, "a plain scalar (no lists, nested maps or anchors)", text)
    return text


def _quoted(text: str, path: str, lineno: int) -> tuple[str, int]:
    """Decode a single- or double-quoted string starting at ``text[0]``; return (value, end)."""
    quote = text[0]
    out: list[str] = []
    i = 1
    escapes = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "/": "/"}
    while i < len(text):
        ch = text[i]
        if quote == "'" and ch == "'":
            if text[i + 1 : i + 2] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        if quote == '"' and ch == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt not in escapes:
                raise InputError(path, lineno, 'a simple escape (\\\\, \\", \\n, \\t)', f"\\{nxt}")
            out.append(escapes[nxt])
            i += 2
            continue
        if quote == '"' and ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise InputError(path, lineno, f"a closing {quote}", "end of line")


@dataclass(frozen=True)
class WebConfig:
    """Validated web config; paths are absolute (resolved against the file's folder)."""

    path: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    users: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    lines: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def ssl_context(self) -> ssl.SSLContext | None:
        """Server-side context, or ``None`` for plain HTTP; load errors name the file's line."""
        if self.cert_file is None or self.key_file is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[self.min_version]
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError, ValueError) as err:
            raise InputError(
                str(self.path),
                self.lines.get("cert_file"),
                "a readable PEM certificate and matching key",
                f"{err}",
            ) from err
        ctx.verify_mode = CLIENT_AUTH_TYPES[self.client_auth_type]
        if self.client_ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError, ValueError) as err:
                raise InputError(
                    str(self.path),
                    self.lines.get("client_ca_file"),
                    "a readable PEM CA bundle",
                    f"{err}",
                ) from err
        return ctx

    def authenticator(self) -> BasicAuth | None:
        """Password checker for ``basic_auth_users``, or ``None`` when auth is off."""
        if not self.users:
            return None
        return BasicAuth(self.users, _load_bcrypt(self.path))


def load_web_config(path: Path) -> WebConfig:
    """Read and validate a web config file (see the module docstring for the format)."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(where, None, "a readable UTF-8 web config file", f"{err}") from err
    doc = parse_subset_yaml(text, where)
    for name in doc:
        if name not in SECTIONS:
            raise InputError(where, _line_of(text, name), f"one of {', '.join(SECTIONS)}", name)
    kwargs: dict[str, Any] = {}
    lines: dict[str, int] = {}
    tls = doc.get("tls_server_config") or {}
    for key, entry in tls.items():
        if key not in TLS_KEYS:
            raise InputError(where, entry.line, f"a key among {', '.join(TLS_KEYS)}", key)
        lines[key] = entry.line
    for key in ("cert_file", "key_file", "client_ca_file"):
        if key in tls:
            entry = tls[key]
            if not entry.value or "\0" in entry.value:
                raise InputError(where, entry.line, f"a file name for {key}", repr(entry.value))
            kwargs[key] = (path.parent / entry.value).absolute()
    if tls and ("cert_file" not in kwargs or "key_file" not in kwargs):
        line = next(iter(tls.values())).line
        raise InputError(where, line, "both cert_file and key_file in tls_server_config", None)
    auth = tls.get("client_auth_type")
    if auth is not None and auth.value not in CLIENT_AUTH_TYPES:
        raise InputError(where, auth.line, f"one of {', '.join(CLIENT_AUTH_TYPES)}", auth.value)
    if auth is not None:
        kwargs["client_auth_type"] = auth.value
    if "client_ca_file" in kwargs and kwargs.get("client_auth_type", "NoClientCert") == (
        "NoClientCert"
    ):  # as exporter-toolkit: a CA without a policy is a mistake, not a silent no-op
        line = lines["client_ca_file"]
        raise InputError(where, line, "client_auth_type to go with client_ca_file", None)
    if kwargs.get("client_auth_type", "NoClientCert") != "NoClientCert" and (
        "client_ca_file" not in kwargs
    ):
        raise InputError(
            where,
            auth.line if auth is not None else None,
            f"client_ca_file to go with {kwargs['client_auth_type']}",
        )
    version = tls.get("min_version")
    if version is not None:
        if version.value not in TLS_VERSIONS:
            raise InputError(
                where, version.line, f"one of {', '.join(TLS_VERSIONS)}", version.value
            )
        kwargs["min_version"] = version.value
    users: dict[str, bytes] = {}
    for user, entry in (doc.get("basic_auth_users") or {}).items():
        if not entry.value.startswith(("$2a$", "$2b$", "$2y$")) or len(entry.value) != 60:
            raise InputError(
                where, entry.line, f"a bcrypt hash for user '{user}'", "something else"
            )
        users[user] = entry.value.encode("ascii", "replace")
    return WebConfig(
        path=path, users=MappingProxyType(users), lines=MappingProxyType(lines), **kwargs
    )


def _line_of(text: str, key: str) -> int | None:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.startswith((f"{key}:", f"'{key}':", f'"{key}":')):
            return lineno
    return None


def _load_bcrypt(path: Path) -> Any:
    """Import bcrypt only when basic auth is configured: it is an optional extra."""
    try:
        import bcrypt
    except ModuleNotFoundError as err:
        raise InputError(
            str(path),
            None,
            "the 'bcrypt' package for basic_auth_users (pip install 'minerwatch[auth]')",
            "it is not installed",
        ) from err
    return bcrypt


Protection = tuple[ssl.SSLContext | None, "BasicAuth | None"]


def _load(path: Path | None) -> tuple[Protection, tuple[Path, ...]]:
    """The TLS context and basic-auth check of a web config (none without one), and the files
    they were read from (the web config and those it names)."""
    if path is None:
        return (None, None), ()
    config = load_web_config(path)
    named = (config.cert_file, config.key_file, config.client_ca_file)
    files = (path, *(f for f in named if f is not None))
    return (config.ssl_context(), config.authenticator()), files


#: Seconds between two looks at the web config's files for a change.
RELOAD_CHECK_S = 1.0


class LiveProtection:
    """A web config's TLS context and basic-auth check, loaded again when the file or one it
    names changes, as exporter-toolkit reads it for every request: a renewed certificate
    (certbot, cert-manager) or a new password is served without a restart. A change that
    does not load (a half-written renewal: the new certificate beside the old key) keeps the
    last good one, logged once per change. The first load raises :class:`InputError` (exit 2
    at start; ``config check`` loads it the same way, so it refuses what ``serve`` would).
    """

    def __init__(self, path: Path | None, check_every_s: float = RELOAD_CHECK_S) -> None:
        self.path = path
        self.check_every_s = check_every_s
        self.current, self._files = _load(path)
        self._stamp = _stamps(self._files)
        self._refused: tuple[Any, ...] | None = None
        #: False from a change that did not load until one that does
        self.last_reload_ok = True
        self._looked = time.monotonic()
        self._lock = threading.Lock()

    def get(self) -> Protection:
        """The protection to serve a new connection or request with (cheap: a clock read,
        and a few ``stat`` at most once per ``check_every_s``)."""
        if self.path is None or time.monotonic() - self._looked < self.check_every_s:
            return self.current
        with self._lock:
            if time.monotonic() - self._looked >= self.check_every_s:
                self._looked = time.monotonic()
                self._reload_if_changed(self.path)
        return self.current

    def _reload_if_changed(self, path: Path) -> None:
        stamp = _stamps(self._files)
        if stamp == self._stamp or stamp == self._refused:
            return
        try:
            loaded, files = _load(path)
        except InputError as err:
            self._refused, self.last_reload_ok = stamp, False
            log.error("web config %s changed but does not load, still serving with the "
                      "previous one: %s", path, err)  # fmt: skip
            return
        # the stamp taken before the load, so that a write during it is loaded at the next look
        same = files == self._files
        self.current, self._files, self._refused = loaded, files, None
        self.last_reload_ok = True
        self._stamp = stamp if same else _stamps(files)
        log.info("web config %s changed: reloaded (%s)", path, "https" if loaded[0] else "http")


def _stamps(files: tuple[Path, ...]) -> tuple[Any, ...]:
    """What changes when one of ``files`` is rewritten, replaced or removed."""
    out: list[Any] = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError as err:
            out.append(err.errno)
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


class BasicAuth:
    """Checks ``user:password`` against bcrypt hashes, remembering successes.

    bcrypt is deliberately slow (tens of ms); Prometheus sends the same credentials every
    scrape, so a verified (user, stored hash, password digest) triple is cached. Only a
    SHA-256 of the password is kept, and failures are never cached, so guessing stays slow.
    """

    _MAX_CACHE = 256

    def __init__(self, users: Mapping[str, bytes], bcrypt: Any) -> None:
        self._users = dict(users)
        self._bcrypt = bcrypt
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()

    def check(self, user: str, password: str) -> bool:
        stored = self._users.get(user)
        if stored is None:
            return False
        secret = password.encode("utf-8")
        key = hashlib.sha256(user.encode("utf-8") + b"\0" + stored + b"\0" + secret).digest()
        with self._lock:
            if key in self._ok:
                return True
        try:
            ok = bool(self._bcrypt.checkpw(secret, stored))
        except ValueError:  # malformed hash or password over bcrypt's 72-byte limit
            return False
        if ok:
            with self._lock:
                if len(self._ok) >= self._MAX_CACHE:
                    self._ok.clear()
                self._ok.add(key)
        return ok
