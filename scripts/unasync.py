"""Generate the synchronous twins of idempo's async I/O code.

The I/O layer (engine driver, network stores, conformance suite) is written once, async, in
``_async/`` folders; this script writes the ``_sync/`` twin of each file by plain token rewrites.
Generated files carry a DO-NOT-EDIT header. CI runs ``--check`` so a twin never drifts.
Real differences between the two worlds live in ``idempo/_primitives.py`` as paired names
(``async_x`` in async code becomes ``sync_x``), not in special cases here.

    python scripts/unasync.py          # regenerate
    python scripts/unasync.py --check  # fail if any twin is stale
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "src" / "idempo"

RULES: list[tuple[str, str]] = [
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"__aenter__", "__enter__"),
    (r"__aexit__", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\bAwaitable\[(\w+)\]", r"\1"),
    (r"\basynccontextmanager\b", "contextmanager"),
    (r"\bAbstractAsyncContextManager\b", "AbstractContextManager"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAsyncGenerator\b", "Generator"),
    (r"\bredis\.asyncio\b", "redis"),
    (r"\bAsync(?=[A-Z])", ""),
    (r"\basync_(?=\w)", "sync_"),
    (r"\b_async\b", "_sync"),
    (r"\basync\b", "sync"),
    (r"\basynchronous\b", "synchronous"),
]
_COMPILED = [(re.compile(p), r) for p, r in RULES]


def unasync_text(text: str, source: str) -> str:
    for pattern, repl in _COMPILED:
        text = pattern.sub(repl, text)
    header = f"# DO NOT EDIT: generated from {source} by scripts/unasync.py\n"
    return header + text


def pairs() -> list[tuple[Path, Path]]:
    out = []
    for src in sorted(SOURCES.rglob("_async/*.py")):
        dst = src.parent.parent / "_sync" / src.name
        out.append((src, dst))
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    expected_names = set()
    for src, dst in pairs():
        expected_names.add(dst)
        text = unasync_text(src.read_text(), str(src.relative_to(ROOT)))
        if dst.exists() and dst.read_text() == text:
            continue
        stale.append(dst)
        if not check:
            dst.parent.mkdir(exist_ok=True)
            dst.write_text(text)
    # a twin whose async source is gone is stale too
    for dst in SOURCES.rglob("_sync/*.py"):
        if dst not in expected_names:
            stale.append(dst)
            if not check:
                dst.unlink()
    for path in stale:
        print(f"{'stale' if check else 'wrote'}: {path.relative_to(ROOT)}")
    if check and stale:
        print("run `python scripts/unasync.py` and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
