"""Text from a host, shown without letting it drive the reader's terminal.

Process names, paths and command lines are chosen by whoever started the process (the
attacker, for a miner), and a responder's ``--reason`` by whoever typed it: an ESC or BEL in
them would retitle, recolour or rewrite the reader's terminal, and a newline would forge a
line of a one-record-per-line listing.
"""

from __future__ import annotations


def printable(value: object, keep: str = "") -> str:
    """``value`` as text with every character that is not printable (but those in ``keep``)
    written as its escape, ``\\x1b`` or ``\\u2028``, so the reader sees it was there."""
    return "".join(c if c.isprintable() or c in keep else _escape(c) for c in str(value))


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
