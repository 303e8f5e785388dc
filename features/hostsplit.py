"""Cut a CSV telemetry file holding many hosts into one temporary file per host, in one pass.

A fleet exported as one CSV (samples, or a process table) would otherwise be read whole: about
340 MB of memory per host-month. :func:`split_csv` copies each host's lines verbatim, with the
header, into a file of its own and records the line each came from, so the readers of
:mod:`~minerwatch.features.io` read a host at a time and still name the line of the original
file. The cut works on bytes (numpy, a block of lines at a time) and declines, returning None,
any file it cannot vouch for line by line: binary or non-UTF-8 data, a host cell it cannot
find before a quote, a record spanning lines, an empty host name. Such a file is read whole,
as before, and the reader names what is wrong with it.
"""

from __future__ import annotations

import csv
import mmap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from minerwatch.features.schema import HOST

#: Bytes of whole lines handled at a time.
BLOCK = 1 << 24

#: Host cells longer than this are not looked for (the file is then read whole).
_LONGEST_HOST = 256

_NL, _COMMA, _QUOTE, _CR = 10, 44, 34, 13


@dataclass(frozen=True)
class Piece:
    """One host's rows of a file holding several, read alone but named as that file.

    CSV: ``path`` holds the header and the host's lines as they were, ``lines`` the line of
    ``source`` each came from (int64, one per line of ``path`` after its header). Parquet:
    ``raw`` are the host column's values read as this host, filtered at read.
    """

    source: Path
    host: str
    rows: int  # the rows of ``source``, all hosts (for notes)
    path: Path | None = None
    lines: Path | None = None
    raw: tuple[str, ...] = field(default=())


@dataclass
class Split:
    """What :func:`split_csv` found: the hosts of a file and, when it holds several, a
    :class:`Piece` of each."""

    hosts: frozenset[str]
    pieces: dict[str, Piece]


@dataclass
class _Out:
    data: BinaryIO
    lines: BinaryIO


def split_csv(
    path: Path, folder: Path, progress: Callable[[float], None] | None = None
) -> Split | None:
    """The hosts of ``path`` and, if more than one, a piece of each written under ``folder``;
    None when the file must be read whole. ``progress`` is told the share of bytes done."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            if size == 0:
                return None
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _split(mm, size, path, folder, progress)
    except (OSError, ValueError):
        return None


def _split(
    mm: mmap.mmap,
    size: int,
    path: Path,
    folder: Path,
    progress: Callable[[float], None] | None,
) -> Split | None:
    if mm.find(b"\0") >= 0:
        return None
    end = mm.find(b"\n")
    if end < 0:
        return None
    head = mm[: end + 1]
    try:
        text = head.decode("utf-8-sig").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        return None
    if "\r" in text or '"' in text:
        return None
    names = [h.strip() for h in next(csv.reader([text]), [])]
    if HOST not in names:
        return None
    column = names.index(HOST)
    names_of: dict[bytes, str] = {}  # raw host cell -> host name
    codes: dict[str, int] = {}
    outs: dict[int, _Out] = {}
    first: tuple[int, int] | None = None  # single-host so far: (code, rows)
    rows = 0
    pos, line = end + 1, 2  # where the next block starts, and its first line's number
    try:
        while pos < size:
            stop = min(pos + BLOCK, size)
            if stop < size:
                nl = mm.rfind(b"\n", pos, stop)
                if nl < 0:
                    nl = mm.find(b"\n", stop)
                stop = size if nl < 0 else nl + 1
            block = mm[pos:stop]
            found = _hosts_of(block, column, names_of, codes)
            if found is None:
                return None
            starts, ends, host = found
            used = host >= 0
            rows += int(np.count_nonzero(used))
            if not outs:
                present = np.unique(host[used])
                if first is None and present.size == 1:
                    first = (int(present[0]), 0)
                if present.size == 1 and first is not None and present[0] == first[0]:
                    pos, line = stop, line + len(starts)
                    if progress is not None:
                        progress(pos / size)
                    continue
                if first is not None:  # a second host: the lines so far are the first's
                    out = _open(outs, first[0], folder, head)
                    _copy(mm, end + 1, pos, out.data)
                    out.lines.write(np.arange(2, line, dtype=np.int64).tobytes())
            _write(block, starts, ends, host, line, outs, folder, head)
            pos, line = stop, line + len(starts)
            if progress is not None:
                progress(pos / size)
    finally:
        for out in outs.values():
            out.data.close()
            out.lines.close()
    if not codes:
        return None  # no data row: the reader says so
    hosts = frozenset(codes)
    if not outs:
        return Split(hosts, {})
    name_of = {code: name for name, code in codes.items()}
    pieces = {
        name_of[code]: Piece(path, name_of[code], rows, *_names(folder, code))
        for code in sorted(outs)
    }
    return Split(hosts, pieces)


def _names(folder: Path, code: int) -> tuple[Path, Path]:
    return folder / f"{code}.csv", folder / f"{code}.lines"


def _open(outs: dict[int, _Out], code: int, folder: Path, head: bytes) -> _Out:
    out = outs.get(code)
    if out is None:
        data, lines = _names(folder, code)
        out = outs[code] = _Out(data.open("xb"), lines.open("xb"))
        out.data.write(head)
    return out


def _copy(mm: mmap.mmap, start: int, stop: int, out: BinaryIO) -> None:
    for at in range(start, stop, BLOCK):
        out.write(mm[at : min(at + BLOCK, stop)])


def _hosts_of(
    block: bytes, column: int, names_of: dict[bytes, str], codes: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Line starts, ends (past the newline) and host codes (-1: blank line) of a block of
    whole lines; None when a line's host cell cannot be told apart from bytes alone."""
    if not block.isascii():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            return None
    arr = np.frombuffer(block, dtype=np.uint8)
    nl = np.flatnonzero(arr == _NL)
    ends = nl + 1
    if not len(nl) or nl[-1] != len(arr) - 1:  # the last line, without a newline
        ends = np.append(ends, len(arr))
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1]
    stops = ends - (arr[ends - 1] == _NL)  # the end of each line's text
    stops = stops - ((stops > starts) & (arr[np.maximum(stops - 1, 0)] == _CR))
    blank = stops == starts
    commas = np.flatnonzero(arr == _COMMA)
    at = np.searchsorted(commas, starts)
    padded = np.append(commas, len(arr) + 1)  # a comma past every line
    if column:
        before = padded[np.minimum(at + column - 1, len(commas))]
        if np.any(~blank & (before >= stops)):
            return None  # too few fields: the reader names the line
        cell_start = np.where(blank, starts, before + 1)
    else:
        cell_start = starts
    after = padded[np.minimum(at + column, len(commas))]
    cell_end = np.where(blank, starts, np.minimum(after, stops))
    quotes = np.flatnonzero(arr == _QUOTE)
    if quotes.size:
        q_at = np.searchsorted(quotes, starts)
        count = np.searchsorted(quotes, ends) - q_at
        if np.any(count % 2):
            return None  # a record may span lines, or a stray quote: read whole
        quoted = count > 0
        first_quote = np.append(quotes, len(arr) + 1)[q_at]
        if np.any(quoted & (first_quote <= cell_end)):
            return None  # a quote in or before the host cell
    width = cell_end - cell_start
    longest = int(width.max()) if len(width) else 0
    if longest > _LONGEST_HOST:
        return None
    host = np.full(len(starts), -1, dtype=np.int64)
    used = np.flatnonzero(~blank)
    if used.size:
        span = np.arange(max(longest, 1))
        inside = span < width[used, None]
        cells = np.zeros((used.size, span.size), dtype=np.uint8)
        cells[inside] = arr[(cell_start[used, None] + span)[inside]]
        distinct, inverse = np.unique(cells.view(f"V{span.size}").ravel(), return_inverse=True)
        code = np.empty(len(distinct), dtype=np.int64)
        for k, raw in enumerate(distinct):
            cell = bytes(raw).rstrip(b"\0")
            name = names_of.get(cell)
            if name is None:
                name = names_of[cell] = cell.decode("utf-8").strip()
            if not name:
                return None  # an empty host: the reader names the line
            code[k] = codes.setdefault(name, len(codes))
        host[used] = code[inverse.ravel()]
    return starts, ends, host


def _write(
    block: bytes,
    starts: np.ndarray,
    ends: np.ndarray,
    host: np.ndarray,
    line: int,
    outs: dict[int, _Out],
    folder: Path,
    head: bytes,
) -> None:
    """Append each line of ``block`` to its host's piece (blank lines to none), and the line
    numbers (``line`` is the block's first) to its line map; runs of lines of one host are
    written as one slice."""
    used = np.flatnonzero(host >= 0)
    if not used.size:
        return
    if ends[-1] == len(block) and (not block or block[-1:] != b"\n"):
        block += b"\n"  # the file's last line, without a newline: keep pieces line-separated
        ends = ends.copy()
        ends[-1] += 1
    h = host[used]
    # runs of consecutive used lines of one host (a blank line between does not break one)
    cut = np.flatnonzero(h[1:] != h[:-1]) + 1
    first = np.concatenate(([0], cut))
    last = np.concatenate((cut, [len(used)]))
    parts: dict[int, list[bytes | memoryview]] = {}
    view = memoryview(block)
    a_s, b_s = used[first], used[last - 1]
    whole = (b_s - a_s + 1) == (last - first)  # no blank line inside the run
    begin, finish = starts.tolist(), ends.tolist()
    for a, b, code, plain in zip(
        a_s.tolist(), b_s.tolist(), h[first].tolist(), whole.tolist(), strict=True
    ):
        chunk = parts.setdefault(code, [])
        if plain:
            chunk.append(view[begin[a] : finish[b]])
        else:  # blank lines inside the run: leave them out
            chunk.extend(view[begin[i] : finish[i]] for i in range(a, b + 1) if host[i] >= 0)
    for code, chunks in parts.items():
        out = _open(outs, code, folder, head)
        out.data.write(b"".join(chunks))
        out.lines.write((used[h == code] + line).astype(np.int64).tobytes())
