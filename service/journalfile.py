"""Damaged entries of the response journals (throttle, isolation), kept as they are.

A journal is a JSON object whose lists (``throttled``, ``exempt``, ``isolated``) hold one
entry per process. One entry hand-edited into a wrong shape must not block the others: a
process the agent paused or isolated is always released. So a journal is read entry by
entry; an entry that does not check is *damaged*: named (file, list and index, field, what
was expected) and written back exactly as it was in the file, byte for byte, ahead of the
valid entries of its list, until a human puts it right.

    >>> text = '{"a": [ {"pid": "x"} , 1 ], "b": 2}'
    >>> array_items(text, "a")
    ['{"pid": "x"}', '1']
    >>> dumps_keeping({"a": [3]}, {"a": ['{"pid": "x"}']})
    '{\\n "a": [\\n  {"pid": "x"},\\n  3\\n ]\\n}'
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
#: Stands for a kept entry while the document is encoded; no valid entry is a string.
_MARK = "\x00minerwatch-kept:{key}:{index}"


@dataclass(frozen=True)
class Damaged:
    """An entry that does not check: where it is, why, and its text in the file."""

    path: str
    where: str  # e.g. "throttled[1]"
    why: str  # e.g. "throttled[1].pid is a string 'x' (a pid is a whole number 1..4194304)"
    raw: str
    note: str = ""  # what it means, e.g. that an isolation is not in force

    def __str__(self) -> str:
        note = f"; {self.note}" if self.note else ""
        return (
            f"{self.path}: {self.why}{note}; this entry was left in the journal as it is "
            "(put it right by hand, then run the command again)"
        )


def _skip(text: str, i: int) -> int:
    m = _WS.match(text, i)
    return m.end() if m else i


def _members(text: str) -> dict[str, tuple[int, int]]:
    """Where each member's value of the top-level object lies in ``text`` (valid JSON)."""
    i = _skip(text, 0)
    if text[i : i + 1] != "{":
        return {}
    i = _skip(text, i + 1)
    spans: dict[str, tuple[int, int]] = {}
    if text[i : i + 1] == "}":
        return spans
    while True:
        key, i = _DECODER.raw_decode(text, i)
        i = _skip(text, _skip(text, i) + 1)  # past ':'
        _, end = _DECODER.raw_decode(text, i)
        spans[str(key)] = (i, end)  # a repeated key: the last one, as json.loads reads it
        i = _skip(text, end)
        if text[i : i + 1] != ",":
            return spans
        i = _skip(text, i + 1)


def array_items(text: str, key: str) -> list[str]:
    """The text of each item of the top-level member ``key`` (a list) of valid JSON
    ``text``, exactly as written; [] when there is no such list."""
    span = _members(text).get(key)
    if span is None or text[span[0]] != "[":
        return []
    i = _skip(text, span[0] + 1)
    items: list[str] = []
    if text[i : i + 1] == "]":
        return items
    while True:
        _, end = _DECODER.raw_decode(text, i)
        items.append(text[i:end])
        i = _skip(text, end)
        if text[i : i + 1] != ",":
            return items
        i = _skip(text, i + 1)


def dumps_keeping(doc: Mapping[str, object], kept: Mapping[str, Sequence[str]]) -> str:
    """``doc`` as the journals write it (``indent=1``), with the texts ``kept[key]`` put
    back verbatim at the head of the list ``doc[key]``."""
    marked: dict[str, object] = dict(doc)
    for key, texts in kept.items():
        if texts:
            items = doc.get(key, [])
            assert isinstance(items, list)
            marked[key] = [_MARK.format(key=key, index=i) for i in range(len(texts))] + items
    out = json.dumps(marked, indent=1)
    for key, texts in kept.items():
        for i, raw in enumerate(texts):
            out = out.replace(json.dumps(_MARK.format(key=key, index=i)), raw, 1)
    return out
