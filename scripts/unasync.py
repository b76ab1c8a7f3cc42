"""Generate the synchronous twins of idempo's async I/O code.

The I/O layer (engine driver, network stores, conformance suites) is written once, async, in
``_async/`` folders; this script writes the ``_sync/`` twin of each file, line by line, with
narrow rewrites of code tokens (``async def``, ``await``, ``__aenter__``, ``AsyncX`` names,
``async_x`` primitives). Prose is not rewritten: a docstring in an ``_async/`` source is written
so that it reads true in both twins. Real differences between the two worlds live in
``idempo/_primitives.py`` as paired names (``async_x`` in async code becomes ``sync_x``), not in
special cases here.

Every rule must fire somewhere over a run: a rule that no longer matches anything fails the run,
so the list cannot silently collect dead rewrites (httpcore does the same).

Generated files carry a DO-NOT-EDIT header. CI runs ``--check``, which prints the first line of
each stale twin that differs from what this script would write.

    python scripts/unasync.py          # regenerate
    python scripts/unasync.py --check  # fail if any twin is stale
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each folder is searched for ``_async/*.py``; the twin goes to the sibling ``_sync/``.
TREES = [ROOT / "src" / "idempo", ROOT / "tests"]


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    repl: str


def _rule(pattern: str, repl: str) -> Rule:
    return Rule(pattern, re.compile(pattern), repl)


RULES: list[Rule] = [
    # statements and dunders
    _rule(r"\basync def\b", "def"),
    _rule(r"\basync with\b", "with"),
    _rule(r"\basync for\b", "for"),
    _rule(r"\bawait ", ""),
    _rule(r"\b__aenter__\b", "__enter__"),
    _rule(r"\b__aexit__\b", "__exit__"),
    _rule(r"\baclose\b", "close"),
    # typing and contextlib
    _rule(r"\bAwaitable\[(\w+)\]", r"\1"),
    _rule(r"\basynccontextmanager\b", "contextmanager"),
    _rule(r"\bAbstractAsyncContextManager\b", "AbstractContextManager"),
    _rule(r"\bAsyncIterator\b", "Iterator"),
    # drivers with an asyncio flavour
    _rule(r"\bredis\.asyncio\b", "redis"),
    # idempo's own paired names: AsyncStore -> Store, async_sleep -> sync_sleep,
    # idempo._async.engine -> idempo._sync.engine, Idempotency.atransaction -> .transaction
    _rule(r"\bAsync(?=[A-Z])", ""),
    _rule(r"\basync_(?=\w)", "sync_"),
    _rule(r"(?<=\.)_async\b", "_sync"),
    _rule(r"\.atransaction\(", ".transaction("),
]


class Unasync:
    """One run over every source: rewrites lines and remembers which rules fired."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.used: set[str] = set()

    def line(self, line: str) -> str:
        for rule in self.rules:
            new = rule.pattern.sub(rule.repl, line)
            if new != line:
                self.used.add(rule.name)
                line = new
        return line

    def text(self, text: str, source: str) -> str:
        header = f"# DO NOT EDIT: generated from {source} by scripts/unasync.py\n"
        return header + "".join(self.line(line) for line in text.splitlines(keepends=True))

    def unused(self) -> list[str]:
        return [rule.name for rule in self.rules if rule.name not in self.used]


def pairs() -> list[tuple[Path, Path]]:
    out = []
    for tree in TREES:
        for src in sorted(tree.rglob("_async/*.py")):
            out.append((src, src.parent.parent / "_sync" / src.name))
    return out


def first_mismatch(expected: str, actual: str) -> str:
    """Where a stale twin first differs, as ``line N: expected ... / found ...``."""
    want, have = expected.splitlines(), actual.splitlines()
    for number, (a, b) in enumerate(zip(want, have, strict=False), start=1):
        if a != b:
            return f"line {number}:\n    expected: {a!r}\n    found:    {b!r}"
    number = min(len(want), len(have)) + 1
    if len(want) > len(have):
        return f"line {number}: expected {want[number - 1]!r}, found the end of the file"
    return f"line {number}: expected the end of the file, found {have[number - 1]!r}"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    run = Unasync(RULES)
    stale: list[tuple[Path, str]] = []
    expected_names = set()
    for src, dst in pairs():
        expected_names.add(dst)
        text = run.text(src.read_text(), str(src.relative_to(ROOT)))
        actual = dst.read_text() if dst.exists() else None
        if actual == text:
            continue
        why = "missing" if actual is None else first_mismatch(text, actual)
        stale.append((dst, why))
        if not check:
            dst.parent.mkdir(exist_ok=True)
            dst.write_text(text)
    # a twin whose async source is gone is stale too
    for tree in TREES:
        for dst in sorted(tree.rglob("_sync/*.py")):
            if dst not in expected_names:
                stale.append((dst, "its _async/ source is gone"))
                if not check:
                    dst.unlink()
    for path, why in stale:
        rel = path.relative_to(ROOT)
        print(f"stale: {rel}: {why}" if check else f"wrote: {rel}")
    status = 0
    if check and stale:
        print("run `python scripts/unasync.py` and commit the result", file=sys.stderr)
        status = 1
    unused = run.unused()
    if unused:
        for name in unused:
            print(f"unused rule: {name!r} matched no line of any _async/ source", file=sys.stderr)
        print("delete the rule from scripts/unasync.py, or fix the pattern", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
