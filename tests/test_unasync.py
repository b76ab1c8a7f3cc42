"""scripts/unasync.py: narrow code-token rewrites, a failure on unused rules, and a --check that
points at the first stale line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "unasync.py"


@pytest.fixture(scope="module")
def unasync() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_code_tokens_are_rewritten(unasync: ModuleType) -> None:
    """async def, await, dunders, Async names and async_ primitives become their sync twins."""
    run = unasync.Unasync(unasync.RULES)
    assert run.line("    async def __aenter__(self) -> AsyncStore:\n") == (
        "    def __enter__(self) -> Store:\n"
    )
    assert run.line("        await async_sleep(0)\n") == "        sync_sleep(0)\n"
    assert run.line("from idempo._async.engine import AsyncEngine\n") == (
        "from idempo._sync.engine import Engine\n"
    )
    assert run.line("    call: Callable[[], Awaitable[Any]]\n") == "    call: Callable[[], Any]\n"


def test_prose_is_left_alone(unasync: ModuleType) -> None:
    """Words in docstrings and comments are not rewritten: no 'an sync store'."""
    run = unasync.Unasync(unasync.RULES)
    for line in [
        '"""The engine, over an async store."""\n',
        "# Redis replicates asynchronously; see ``_async/engine.py``.\n",
        "    MyAsyncStore is a name, asyncio a module\n",
    ]:
        assert run.line(line) == line


def test_unused_rules_are_reported(unasync: ModuleType) -> None:
    """A rule that matched no line over a run is named, so dead rules cannot pile up."""
    rules = [unasync._rule(r"\basync def\b", "def"), unasync._rule(r"\bnever_seen\b", "x")]
    run = unasync.Unasync(rules)
    run.text("async def f() -> None: ...\n", "src/x/_async/f.py")
    assert run.unused() == [r"\bnever_seen\b"]


def test_generated_text_carries_the_header(unasync: ModuleType) -> None:
    """Every twin starts with the DO NOT EDIT line naming its source."""
    run = unasync.Unasync(unasync.RULES)
    text = run.text("x = 1\n", "src/idempo/_async/x.py")
    assert text.splitlines()[0] == (
        "# DO NOT EDIT: generated from src/idempo/_async/x.py by scripts/unasync.py"
    )


def test_first_mismatch_names_the_line(unasync: ModuleType) -> None:
    """--check shows where a stale twin first differs, or which file is longer."""
    assert unasync.first_mismatch("a\nb\nc\n", "a\nB\nc\n") == (
        "line 2:\n    expected: 'b'\n    found:    'B'"
    )
    assert "expected 'c', found the end of the file" in unasync.first_mismatch("a\nc\n", "a\n")
    assert "expected the end of the file, found 'z'" in unasync.first_mismatch("a\n", "a\nz\n")


def test_the_twins_in_the_tree_are_current(
    unasync: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """--check passes on the tree as committed, every rule firing somewhere."""
    assert unasync.main(["--check"]) == 0, capsys.readouterr()
