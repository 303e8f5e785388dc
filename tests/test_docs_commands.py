"""Every ``minerwatch ...`` command line the docs show still parses: its subcommand exists and
each flag it uses is one the real command's ``--help`` lists.

Nothing else checked the docs' examples: a flag renamed or removed in ``service/cli.py`` would
leave the README showing a command that exits 2. The check runs the real console script
(``tests/entry.py``), one ``--help`` per (sub)command, cached.

Where the command lines come from (``DOCS``; not ``docs/benchmarks.md``, which records runs of
older code as they were made):

- fenced code blocks of ``sh``/``bash``/``shell``/``console`` (yaml, json, toml and other
  blocks are data, not commands), and of no language, where only a line that starts with a
  minerwatch command counts (such blocks also hold file trees and the README's layout); a line
  ending in ``\\`` continues on the next and is reported at its first line; a leading ``$ ``
  prompt is dropped;
- inline code spans (within one paragraph, line breaks read as spaces) whose text starts with
  ``minerwatch ``; and those that start with one of the command's subcommands and go on
  (``serve --isolate-on-alert``, ``fleet train --alarms-per-week``, ``isolate release --pid``),
  read as ``minerwatch`` + the span, but only as far as they read as a command: when the word
  after a command with subcommands names none of them, the span is output or prose quoted
  (``fleet train: 30/300 hosts done``, ``throttle journal ... not updated``), not a command.

How a line is read (shell words, ``shlex``):

- ``# ...`` from a word that starts with ``#`` to the end of the line is a comment;
- ``&&``, ``||``, ``;``, ``&``, ``(``, ``)`` and a shell pipe ``|`` separate commands; a
  redirection (``>``, ``>>``, ``<``, ``>&``...) and its target are dropped. A command is a
  minerwatch command when its first word, after ``VAR=value``, ``sudo``, ``nohup``, ``env``,
  ``exec`` and ``time``, is ``minerwatch`` or a path ending in ``/minerwatch``
  (``.venv/bin/minerwatch``), or ``python* -m minerwatch``; ``ln -s .../bin/minerwatch``
  or ``systemctl restart minerwatch`` are not;
- ``[...]`` marks optional parts: the brackets are dropped and what is inside is checked like
  the rest; a ``|`` inside brackets, or followed by a flag (``--process PID | --host``), is an
  alternative, not a pipe; ``a|b`` inside one word (``fleet train|score|export``,
  ``throttle status|release``) names alternatives, each checked;
- placeholders (``<host>``, ``<Unix seconds>``, ``...``, ``…``, ``FILE``) are values: only
  words starting with ``-`` are judged as flags (``-`` alone, standard output, and negative
  numbers are values), and ``--flag=value`` is judged by ``--flag``;
- the leading bare words name the subcommand as far as the command has subcommands
  (``fleet serve``, ``isolate release``); a bare word where a command lists subcommands must
  be one of them. A command with subcommands named alone (``minerwatch isolate``, in prose) is
  fine. Every flag is judged against the ``--help`` of the deepest subcommand named.
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from entry import run

ROOT = Path(__file__).resolve().parent.parent
DOCS = (
    "README.md",
    "deploy/README.md",
    "datasets/README.md",
    "docs/fleet.md",
    "docs/reliability.md",
    "docs/signals.md",
)
SHELL_FENCES = {"", "sh", "bash", "shell", "console"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
SEPARATORS = {"&&", "||", ";", "&", "(", ")", ";;"}
PREFIXES = {"sudo", "nohup", "env", "exec", "time"}
ALTERNATIVE = "\x00"


@dataclass(frozen=True)
class Line:
    """A command line of a doc: where it is (file, first line) and its text."""

    doc: str
    lineno: int
    text: str
    #: a line of a fence without a language: a command only if it starts with one
    first_only: bool = False
    #: an inline span starting with a subcommand (``minerwatch`` implied): not a command
    #: unless its leading words name subcommands
    implied: bool = False

    def where(self) -> str:
        return f"{self.doc}:{self.lineno}"


@dataclass(frozen=True)
class Help:
    """What ``minerwatch ... --help`` lists: its flags and its subcommands."""

    flags: frozenset[str]
    subcommands: frozenset[str]


def parse_help(text: str) -> Help:
    """Flags from the option lines (two spaces, then ``-``: the invocation up to the gap
    before its help); subcommands from the lines indented four spaces under ``COMMAND``."""
    flags: set[str] = set()
    subcommands: set[str] = set()
    in_commands = False
    for line in text.splitlines():
        if re.match(r"^  -", line):
            invocation = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            flags.update(re.findall(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)", invocation))
            in_commands = False
        elif line.strip() == "COMMAND":
            in_commands = True
        elif in_commands and (m := re.match(r"^    ([a-z][\w-]*)(\s|$)", line)):
            subcommands.add(m.group(1))
        elif in_commands and line and not line.startswith("     "):
            in_commands = False
    return Help(frozenset(flags), frozenset(subcommands))


@functools.cache
def real_help(path: tuple[str, ...]) -> Help:
    """The ``--help`` of ``minerwatch PATH...``, run through the real command once."""
    r = run(*path, "--help", timeout=60)
    assert r.returncode == 0, (path, r.returncode, r.stderr[-2000:])
    return parse_help(r.stdout)


def doc_lines(doc: str, text: str, commands: frozenset[str]) -> list[Line]:
    """The command lines of one doc: logical lines of shell fences, and inline spans that
    start with ``minerwatch `` or with one of ``commands`` (the top-level subcommands)."""
    found: list[Line] = []
    outside: list[str] = []  # the text outside fences, fenced lines blanked (same numbering)
    fence: str | None = None
    language = ""
    shell = False
    pending: tuple[int, str] | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence, language = m.group(1)[0] * 3, m.group(2).lower()
            shell = language in SHELL_FENCES
            outside.append("")
            continue
        if fence is not None and m and line.strip().startswith(fence):
            fence = None
            outside.append("")
            continue
        if fence is None:
            outside.append(line)
            continue
        outside.append("")
        if not shell:
            continue
        start, body = pending if pending else (lineno, "")
        body += " " + line.strip().removeprefix("$ ")
        if body.endswith("\\"):
            pending = (start, body[:-1])
            continue
        pending = None
        if body.strip():
            found.append(Line(doc, start, " ".join(body.split()), first_only=not language))
    paragraph_start = 1
    for block in re.split(r"(\n[ \t]*\n)", "\n".join(outside)):
        for m in re.finditer(r"`([^`]+)`", block):
            span = " ".join(m.group(1).split())
            lineno = paragraph_start + block.count("\n", 0, m.start())
            first, _, rest = span.partition(" ")
            if first == "minerwatch" and rest:
                found.append(Line(doc, lineno, span))
            elif first.split("|")[0] in commands and rest:
                found.append(Line(doc, lineno, f"minerwatch {span}", implied=True))
        paragraph_start += block.count("\n")
    return found


def words(text: str) -> list[str]:
    """Shell words, with ``a|b`` inside one word kept together (as ``a``, NUL, ``b``)."""
    text = re.sub(r"(?<=\w)\|(?=\w)", ALTERNATIVE, text)
    text = re.sub(r"<[\w .:/-]+>", "PLACEHOLDER", text)  # <host>, <Unix seconds>: values
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    out: list[str] = []
    for word in lexer:
        if word.startswith("#"):
            break
        out.append(word)
    return out


def minerwatch_commands(line: Line) -> list[list[str]]:
    """The arguments of every minerwatch command on a line (after ``minerwatch``)."""
    commands: list[list[str]] = []
    current: list[str] = []
    depth = 0
    tokens = words(line.text)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in SEPARATORS or (token == "|" and depth == 0 and not nxt.startswith("-")):
            commands.append(current)
            current = []
        elif re.fullmatch(r"\d*[<>]+&?|&>", token):
            i += 1  # the redirection's target
        elif token == "|":
            pass  # an alternative inside [...] or before a flag
        else:
            depth += token.count("[") - token.count("]")
            current.append(token)
        i += 1
    commands.append(current)
    found = []
    for command in commands[:1] if line.first_only else commands:
        while command and (command[0] in PREFIXES or re.fullmatch(r"\w+=\S*", command[0])):
            command = command[1:]
        if not command:
            continue
        program = command[0].strip("[]")
        if program == "minerwatch" or program.endswith("/minerwatch"):
            found.append(command[1:])
        elif re.fullmatch(r"(.*/)?python[\d.]*", program) and command[1:3] == ["-m", "minerwatch"]:
            found.append(command[3:])
    return found


def check(line: Line, args: list[str], helper=real_help) -> list[str]:
    """What is wrong with ``minerwatch ARGS`` against the real ``--help``s: one message each,
    naming the doc's file and line."""
    args = [a.strip("[]") for a in args]
    args = [a for a in args if a]
    if not args:
        return [f"{line.where()}: `minerwatch` without a subcommand: {line.text}"]
    paths: list[tuple[str, ...]] = [()]
    i = 0
    while i < len(args) and not args[i].startswith("-"):
        deeper = []
        for path in paths:
            listed = helper(path).subcommands
            if not listed:
                deeper.append(path)
                continue
            for name in args[i].split(ALTERNATIVE):
                if name not in listed:
                    if line.implied:
                        return []  # quoted output or prose, not a command
                    shown = " ".join(("minerwatch", *path))
                    return [
                        f"{line.where()}: `{shown}` has no subcommand {name!r}"
                        f" (its --help lists {', '.join(sorted(listed))}): {line.text}"
                    ]
                deeper.append((*path, name))
        if deeper == paths:
            break
        paths = deeper
        i += 1
    problems = []
    for path in paths:
        listed = helper(path).flags
        for arg in args[i:]:
            if not re.match(r"--?[A-Za-z]", arg):
                continue  # a value: a placeholder, '-', a negative number
            for flag in arg.split(ALTERNATIVE):
                flag = flag.split("=", 1)[0]
                if flag not in listed:
                    shown = " ".join(("minerwatch", *path))
                    problems.append(
                        f"{line.where()}: {flag} is not a flag of `{shown}`"
                        f" (its --help does not list it): {line.text}"
                    )
    return problems


def doc_problems(doc: str, text: str, helper=real_help) -> tuple[int, list[str]]:
    """How many minerwatch commands the doc shows, and what is wrong with them."""
    count, problems = 0, []
    for line in doc_lines(doc, text, helper(()).subcommands):
        try:
            commands = minerwatch_commands(line)
        except ValueError as e:  # shlex: an unclosed quote
            if not line.implied and re.search(r"(^|[\s/])minerwatch\s+[a-z]", line.text):
                problems.append(f"{line.where()}: not a shell line ({e}): {line.text}")
            continue  # else prose in a fence (a file tree), no command
        for args in commands:
            count += 1
            problems += check(line, args, helper)
    return count, problems


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_the_doc_shows_parses(doc):
    count, problems = doc_problems(doc, (ROOT / doc).read_text())
    assert not problems, "\n".join(problems)
    if doc in ("README.md", "deploy/README.md", "datasets/README.md", "docs/fleet.md"):
        assert count >= 3, f"{doc}: only {count} minerwatch commands found: extraction broken?"


FAKE_HELP = {
    (): Help(frozenset({"-h", "--help"}), frozenset({"fleet", "report", "isolate"})),
    ("fleet",): Help(frozenset({"-h", "--help"}), frozenset({"train", "score"})),
    ("fleet", "train"): Help(frozenset({"-h", "--help", "--days", "--jobs"}), frozenset()),
    ("fleet", "score"): Help(frozenset({"-h", "--help", "--start"}), frozenset()),
    ("report",): Help(frozenset({"-h", "--help", "--output", "--scores"}), frozenset()),
    ("isolate",): Help(frozenset({"-h", "--help", "--process", "--host"}), frozenset({"status"})),
    ("isolate", "status"): Help(frozenset({"-h", "--help"}), frozenset()),
}

FAKE_DOC = """\
Some prose, then `minerwatch report --scores s.csv --bogus-inline` across
two lines: `minerwatch
fleet train|score --days 3`. Output: `fleet train: 3/30 hosts done`; `isolate
--bogus-implied` and `isolate status`; `report` alone.

```sh
minerwatch report --scores <file> --output - | head   # --commented-out is fine
.venv/bin/minerwatch fleet train --days 14 \\
    [--jobs 8 | --bogus-continued] && ln -s x/bin/minerwatch /usr/local/bin/minerwatch
minerwatch isolate --process PID | --host
minerwatch fleet frobnicate --days 1
```

```yaml
job_name: minerwatch --not-checked
```
"""


def test_the_check_finds_a_bogus_flag_a_missing_subcommand_and_names_the_line():
    """The rules of the module docstring, on a doc made up for it (no command run)."""
    count, problems = doc_problems("fake.md", FAKE_DOC, FAKE_HELP.__getitem__)
    assert count == 9
    assert problems == [
        "fake.md:8: --bogus-continued is not a flag of `minerwatch fleet train` (its --help"
        " does not list it): .venv/bin/minerwatch fleet train --days 14"
        " [--jobs 8 | --bogus-continued] && ln -s x/bin/minerwatch /usr/local/bin/minerwatch",
        "fake.md:11: `minerwatch fleet` has no subcommand 'frobnicate' (its --help lists score,"
        " train): minerwatch fleet frobnicate --days 1",
        "fake.md:1: --bogus-inline is not a flag of `minerwatch report` (its --help does not"
        " list it): minerwatch report --scores s.csv --bogus-inline",
        "fake.md:2: --days is not a flag of `minerwatch fleet score` (its --help does not list"
        " it): minerwatch fleet train|score --days 3",
        "fake.md:3: --bogus-implied is not a flag of `minerwatch isolate` (its --help does not"
        " list it): minerwatch isolate --bogus-implied",
    ]


def test_help_parsing_reads_flags_aliases_and_subcommands():
    h = real_help(("isolate",))
    assert {"--process", "--host", "--allow-ssh-from", "--dry-run", "--data-dir"} <= h.flags
    assert h.subcommands == {"status", "release"}
    serve = real_help(("serve",))
    assert {"--throttle", "--no-throttle", "--learn-for", "--ioc-dir"} <= serve.flags
    assert real_help(()).subcommands >= {"fleet", "serve", "train", "score", "isolate"}
