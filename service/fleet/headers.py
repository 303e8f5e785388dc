"""``--header 'NAME: VALUE'``: a fixed HTTP header sent with every request to Prometheus.

Grafana Mimir and Cortex answer 401 "no org id" to a query without ``X-Scope-OrgID``, and
some proxies in front of Prometheus want a header of their own. Checked when the command line
is read, so a bad one is exit 2 before any request: one ``http.client`` refuses would be an
unexpected failure at the first request, one the client sets itself would change how its
requests and answers are framed. Only ``re``: :mod:`minerwatch.service.cli` imports this for
every command (not :mod:`.promclient`, which loads numpy).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: RFC 7230's ``token``: what a header name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
#: Printable ASCII and spaces inside: no CR/LF (a second header smuggled in), no other
#: control character, nothing ``http.client`` could not encode.
_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?\Z")

#: Credentials: read from files (--bearer-token-file, --password-file), so they are never
#: seen in ``ps`` or shell history.
SECRET = ("Authorization", "Proxy-Authorization")
#: Set by the client or by ``urllib`` for each request: another value would break how the
#: request or answer is framed or read (Accept-Encoding is --gzip's).
CLIENT_SET = (
    "Accept", "Accept-Encoding", "Connection", "Content-Length", "Content-Type", "Host",
    "Transfer-Encoding",
)  # fmt: skip

EXAMPLE = "'X-Scope-OrgID: team-a'"


def parse_header(text: str) -> tuple[str, str]:
    """``NAME: VALUE`` as (name, value), spaces around either dropped; ValueError saying
    what was expected otherwise (a refused credential's value is not repeated)."""
    name, colon, value = text.partition(":")
    name, value = name.strip(" \t"), value.strip(" \t")  # RFC 7230 OWS, not CR or LF
    first = re.split(r"[:\s]", text.strip(), maxsplit=1)[0]
    if _secret(first):  # 'Authorization Bearer x' too: a credential is never repeated
        _check(first, "")
    if not colon:
        raise ValueError(f"expected 'NAME: VALUE' (e.g. {EXAMPLE}), got {text!r}")
    _check(name, value)
    return name, value


def _check(name: str, value: str) -> None:
    """ValueError saying what was expected unless ``name: value`` may be sent as it is."""
    if _secret(name):
        raise ValueError(
            f"expected a header other than {name}: secrets are read from files, never given on "
            "a command line (use --bearer-token-file, or --username with --password-file)"
        )
    if not _TOKEN.match(name):
        raise ValueError(
            "expected 'NAME: VALUE' with NAME an HTTP header name (letters, digits and "
            f"!#$%&'*+-.^_`|~), got the name {name!r}"
        )
    if name.lower() in (s.lower() for s in CLIENT_SET):
        raise ValueError(
            f"expected a header minerwatch does not set itself (not {', '.join(CLIENT_SET)}), "
            f"got {name}"
        )
    if not _VALUE.match(value):
        got = "none" if not value else repr(value)
        raise ValueError(
            f"expected a VALUE after '{name}:', printable ASCII on one line (no CR, LF or "
            f"other control characters), got {got}"
        )


def _secret(name: str) -> bool:
    return name.lower() in (s.lower() for s in SECRET)


def duplicate(headers: Iterable[tuple[str, str]]) -> str | None:
    """The first header name given twice (names are case-insensitive), else None."""
    seen: set[str] = set()
    for name, _ in headers:
        if name.lower() in seen:
            return name
        seen.add(name.lower())
    return None
