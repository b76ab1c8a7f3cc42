"""``idempo check URL``: probe a live HTTP API for the behaviours of DESIGN section 6, and score it.

The checker is for any API, behind idempo or not. It sends only the requests :func:`plan`
announces, only to the URL it is given (redirects are not followed), and never more than that
bound. Each probe that sends requests creates at least one real effect on the API, so the
command asks first on a terminal and needs ``--yes`` without one.

The probes, in order (``retry-after`` and ``problem+json`` send nothing: they judge the error
answers the others got):

- ``replay``: the same request twice with one new key; the second answer has the first's status
  and body, and ``Idempotent-Replayed: true``.
- ``concurrent``: N identical requests at once with one new key; exactly one executes, every
  other answer is a marked replay of it or a 409.
- ``mismatch``: a new key, then the same key with another body: 422.
- ``malformed-key``: an over-long key and an empty key: 400 each.
- ``missing-key``: no key, twice: whatever the API's policy (400, or run without a key), never
  a 5xx, and never one keyless request replayed to another.
- ``retry-after``: every 409 carries ``Retry-After``.
- ``problem+json``: every refusal is ``application/problem+json`` with ``type``, ``title`` and
  the matching ``status``.

Exit status: 0 when every probe passed, 1 when one failed, 2 when the check could not run
(unreachable, no answer in time, declined, the request itself refused).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import sys
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Answer",
    "CheckError",
    "ProbeResult",
    "Scorecard",
    "Target",
    "check",
    "plan",
    "run_check",
]

#: A key longer than the 255 characters DESIGN section 6 (and the IETF draft's examples) allow.
LONG_KEY_LENGTH = 300
REPLAYED = "idempotent-replayed"


class CheckError(Exception):
    """The check could not run: the API is unreachable, silent, or refuses the request itself."""


class _CouldNotRun(click.ClickException):
    exit_code = 2


@dataclass(frozen=True)
class Target:
    """The request the checker was told to send, and how."""

    url: str
    method: str = "POST"
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    key_header: str = "Idempotency-Key"
    bare_keys: bool = False
    concurrency: int = 10
    timeout: float = 10.0

    def key(self, value: str) -> str:
        """``value`` as the key header carries it: an RFC 9651 String (the IETF draft's form),
        or a bare token (Stripe's)."""
        return value if self.bare_keys else f'"{value}"'

    def other_body(self) -> tuple[bytes, str | None]:
        """A body the API must not take for this one: for JSON a changed document, not the same
        one reformatted, since a careful fingerprint canonicalizes JSON."""
        if self.body and _is_json(self.content_type):
            try:
                doc = json.loads(self.body)
            except ValueError:
                doc = None
            else:
                other = (
                    {**doc, "idempo_check": "another body"}
                    if isinstance(doc, dict)
                    else {"idempo_check": "another body", "value": doc}
                )
                return json.dumps(other).encode(), self.content_type
        if self.body:
            return self.body + b"\n(idempo check: another body)", self.content_type
        return b'{"idempo_check": "another body"}', "application/json"


@dataclass(frozen=True)
class Answer:
    """One response, read in full."""

    status: int
    headers: Mapping[str, str]  # case-insensitive (httpx's Headers)
    body: bytes

    @property
    def success(self) -> bool:
        return 200 <= self.status < 300

    @property
    def replayed(self) -> bool:
        return self.headers.get(REPLAYED, "").strip().lower() == "true"

    def same_as(self, other: Answer) -> bool:
        return self.status == other.status and self.body == other.body

    def show(self) -> str:
        """The status and the start of the body, for a one-line detail."""
        text = self.body[:60].decode("utf-8", "replace").replace("\n", " ").strip()
        more = "..." if len(self.body) > 60 else ""
        return f"{self.status} {text}{more}".strip()


@dataclass(frozen=True)
class ProbeResult:
    """One row of the scorecard. ``observed`` is False when the probe found nothing to judge
    (no 409 was ever answered, say): it then passes, since nothing was wrong."""

    name: str
    passed: bool
    detail: str
    observed: bool = True


@dataclass
class Scorecard:
    url: str
    probes: list[ProbeResult]
    requests: int

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.probes)

    def as_json(self) -> dict[str, Any]:
        """DESIGN section 7's shape, stable for scripts (plus ``requests`` and ``observed``)."""
        return {
            "url": self.url,
            "passed": self.passed,
            "requests": self.requests,
            "probes": [
                {"name": p.name, "passed": p.passed, "detail": p.detail, "observed": p.observed}
                for p in self.probes
            ],
        }


# -- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    name: str
    requests: int
    executes: int  # at most, on an API that honours keys and runs keyless requests
    what: str


def plan(target: Target) -> list[_Step]:
    """What the check will send, probe by probe: announced before anything is sent."""
    n = target.concurrency
    return [
        _Step("replay", 2, 1, "the request twice, with one new key"),
        _Step("concurrent", n, 1, f"the request {n} times at once, with one new key"),
        _Step("mismatch", 2, 1, "the request with a new key, then that key with another body"),
        _Step("malformed-key", 2, 0, f"a {LONG_KEY_LENGTH}-character key, then an empty key"),
        _Step("missing-key", 2, 2, "the request twice without a key"),
        _Step("retry-after", 0, 0, "judges the 409 answers above"),
        _Step("problem+json", 0, 0, "judges the refusals above"),
    ]


def _announce(target: Target, run: str) -> str:
    steps = plan(target)
    total = sum(s.requests for s in steps)
    honoured = sum(s.executes for s in steps)
    lines = [f"idempo check will send {total} {target.method} requests to {target.url}:"]
    lines += [f"  {s.name:<14}{s.requests or '-':>4}  {s.what}" for s in steps]
    lines += [
        "These are real requests with real effects: each probe that sends any makes at least one.",
        f"An API that honours keys executes at most {honoured} of them; one that ignores keys,"
        f" all {total}.",
        f"Keys start with idempo-check-{run}-; redirects are not followed.",
    ]
    return "\n".join(lines)


# -- the probes --------------------------------------------------------------------------------


class _Sender:
    """Sends the target's request; counts every attempt and refuses to exceed the plan."""

    def __init__(self, target: Target, client: httpx.AsyncClient, limit: int) -> None:
        self.target = target
        self.client = client
        self.limit = limit
        self.sent = 0

    async def send(
        self, key: str | None, body: bytes | None = None, content_type: str | None = None
    ) -> Answer:
        import httpx

        if self.sent >= self.limit:  # a bug in a probe must not send what was not announced
            raise AssertionError(f"the check tried to send more than the {self.limit} announced")
        self.sent += 1
        target = self.target
        headers = list(target.headers)
        if body is None:
            body, content_type = target.body, target.content_type
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        if key is not None:
            headers.append((target.key_header, key))
        try:
            response = await self.client.request(
                target.method, target.url, content=body, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise CheckError(f"no answer from {target.url} within {target.timeout:g}s") from exc
        except httpx.HTTPError as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            what = "cannot reach" if isinstance(exc, httpx.ConnectError) else "no answer from"
            raise CheckError(f"{what} {target.url}: {reason}") from exc
        return Answer(response.status_code, response.headers, response.content)


@dataclass
class _Run:
    sender: _Sender
    run: str
    refusals: list[tuple[str, Answer]] = field(default_factory=list)  # (probe, 4xx answer)

    def key(self, probe: str) -> str:
        return self.sender.target.key(f"idempo-check-{self.run}-{probe}")

    def refused(self, probe: str, *answers: Answer) -> None:
        self.refusals += [(probe, a) for a in answers if 400 <= a.status < 500]


async def _replay(r: _Run) -> ProbeResult:
    key = r.key("replay")
    first = await r.sender.send(key)
    if not first.success:
        # Nothing else means anything if the request itself is refused: stop before more effects.
        hint = " (redirects are not followed)" if 300 <= first.status < 400 else ""
        raise CheckError(
            f"the request itself was answered {first.show()}{hint}: give one the API accepts"
            " (credentials with -H, a valid body with --json)"
        )
    second = await r.sender.send(key)
    if first.replayed:
        return ProbeResult("replay", False, "a new key's first answer was marked as a replay")
    if not second.same_as(first):
        return ProbeResult(
            "replay", False, f"the retry executed again: {first.show()}, then {second.show()}"
        )
    if not second.replayed:
        return ProbeResult(
            "replay",
            False,
            f"same status and body ({first.status}), but no 'Idempotent-Replayed: true': a"
            " client cannot tell a replay from a second execution",
        )
    return ProbeResult("replay", True, f"{first.status}, replayed with the same body, marked")


async def _concurrent(r: _Run) -> ProbeResult:
    key = r.key("concurrent")
    n = r.sender.target.concurrency
    results = await asyncio.gather(*(r.sender.send(key) for _ in range(n)), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    answers = [a for a in results if isinstance(a, Answer)]
    executed = [a for a in answers if a.success and not a.replayed]
    replays = [a for a in answers if a.success and a.replayed]
    conflicts = [a for a in answers if a.status == 409]
    others = [a for a in answers if not a.success and a.status != 409]
    r.refused("concurrent", *conflicts)
    counts = f"{len(executed)} executed, {len(replays)} replayed, {len(conflicts)} answered 409"
    if others:
        counts += f", {len(others)} answered otherwise (first: {others[0].show()})"
    if len(executed) != 1:
        return ProbeResult("concurrent", False, f"{n} at once: {counts}; exactly 1 may execute")
    if others:
        return ProbeResult("concurrent", False, f"{n} at once: {counts}")
    if any(not a.same_as(executed[0]) for a in replays):
        return ProbeResult("concurrent", False, f"{n} at once: {counts}; a replay differs")
    return ProbeResult("concurrent", True, f"{n} at once: {counts}")


async def _mismatch(r: _Run) -> ProbeResult:
    key = r.key("mismatch")
    first = await r.sender.send(key)
    if not first.success:
        return ProbeResult("mismatch", False, f"the first request was answered {first.show()}")
    other = await r.sender.send(key, *r.sender.target.other_body())
    r.refused("mismatch", other)
    if other.status == 422:
        return ProbeResult("mismatch", True, "the key reused with another body: 422")
    if other.success and other.replayed:
        what = "replayed the first request's answer"
    elif other.success:
        what = f"executed it ({other.status})"
    else:
        what = f"answered {other.show()}"
    return ProbeResult(
        "mismatch", False, f"the key reused with another body: {what}; 422 is expected"
    )


async def _malformed_key(r: _Run) -> ProbeResult:
    target = r.sender.target
    long = await r.sender.send(target.key("k" * LONG_KEY_LENGTH))
    empty = await r.sender.send(target.key(""))
    r.refused("malformed-key", long, empty)
    faults = [
        f"{what}: {a.show()}"
        for what, a in ((f"a {LONG_KEY_LENGTH}-character key", long), ("an empty key", empty))
        if a.status != 400
    ]
    if faults:
        return ProbeResult("malformed-key", False, "; ".join(faults) + " (400 is expected)")
    return ProbeResult("malformed-key", True, "an over-long key and an empty key: 400 each")


async def _missing_key(r: _Run) -> ProbeResult:
    first = await r.sender.send(None)
    second = await r.sender.send(None)
    r.refused("missing-key", first, second)
    for a in (first, second):
        if a.status >= 500:
            return ProbeResult("missing-key", False, f"a request without a key: {a.show()}")
    if second.success and second.replayed:
        return ProbeResult(
            "missing-key", False, "a request without a key got a replay: keyless requests share"
        )
    if first.status == 400:
        return ProbeResult("missing-key", True, "the key is required: 400")
    if first.success:
        return ProbeResult(
            "missing-key", True, f"runs without a key ({first.status}): the key is optional"
        )
    return ProbeResult("missing-key", True, f"a request without a key: {first.show()}")


_DELTA_SECONDS = re.compile(r"\d+")


def _retry_after_ok(value: str | None) -> bool:
    if value is None:
        return False
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return True
    try:
        email.utils.parsedate_to_datetime(value)  # the HTTP-date form
    except (TypeError, ValueError):
        return False
    return True


def _retry_after(r: _Run) -> ProbeResult:
    conflicts = [(probe, a) for probe, a in r.refusals if a.status == 409]
    if not conflicts:
        return ProbeResult(
            "retry-after",
            True,
            "no 409 was answered, so none to judge (duplicates came after the first finished)",
            observed=False,
        )
    bad = [(p, a) for p, a in conflicts if not _retry_after_ok(a.headers.get("retry-after"))]
    if bad:
        probe, answer = bad[0]
        value = answer.headers.get("retry-after")
        got = "none" if value is None else repr(value)
        return ProbeResult(
            "retry-after",
            False,
            f"{len(bad)} of {len(conflicts)} 409 answers lack a valid Retry-After ({probe}: {got})",
        )
    return ProbeResult("retry-after", True, f"every 409 ({len(conflicts)}) has Retry-After")


def _problem_fault(answer: Answer) -> str | None:
    media = answer.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/problem+json":
        return f"{answer.status} came as {media or 'no content type'}"
    try:
        doc = json.loads(answer.body)
    except ValueError:
        return f"{answer.status} is not JSON"
    if not isinstance(doc, dict):
        return f"{answer.status} is not a JSON object"
    missing = [name for name in ("type", "title", "status") if name not in doc]
    if missing:
        return f"{answer.status} lacks {', '.join(missing)}"
    if not isinstance(doc["type"], str) or not isinstance(doc["title"], str):
        return f"{answer.status} has a type or title that is not a string"
    if doc["status"] != answer.status:
        return f"{answer.status} says status {doc['status']!r}"
    return None


def _problem_json(r: _Run) -> ProbeResult:
    if not r.refusals:
        return ProbeResult(
            "problem+json", True, "nothing was refused, so no error body to judge", observed=False
        )
    faults = [(p, f) for p, a in r.refusals if (f := _problem_fault(a)) is not None]
    if faults:
        probe, fault = faults[0]
        return ProbeResult(
            "problem+json",
            False,
            f"{len(faults)} of {len(r.refusals)} refusals are not problem+json ({probe}: {fault})",
        )
    return ProbeResult(
        "problem+json", True, f"every refusal ({len(r.refusals)}) is problem+json with a type"
    )


_SENDING: Sequence[Callable[[_Run], Coroutine[Any, Any, ProbeResult]]] = (
    _replay,
    _concurrent,
    _mismatch,
    _malformed_key,
    _missing_key,
)
_JUDGING: Sequence[Callable[[_Run], ProbeResult]] = (_retry_after, _problem_json)


async def run_check(target: Target, *, run: str | None = None) -> Scorecard:
    """Run every probe against ``target``, in :func:`plan`'s order; :class:`CheckError` if the
    check cannot run (its message says how many requests were sent by then)."""
    import httpx

    run = run or uuid.uuid4().hex[:12]
    limit = sum(s.requests for s in plan(target))
    n = target.concurrency
    async with httpx.AsyncClient(
        timeout=target.timeout,
        follow_redirects=False,
        limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
    ) as client:
        r = _Run(_Sender(target, client, limit), run)
        probes: list[ProbeResult] = []
        try:
            for probe in _SENDING:
                probes.append(await probe(r))
        except CheckError as exc:
            raise CheckError(f"{exc} ({_requests(r.sender.sent)} sent)") from exc
    probes += [judge(r) for judge in _JUDGING]
    return Scorecard(target.url, probes, r.sender.sent)


def _requests(n: int) -> str:
    return f"{n} request" + ("" if n == 1 else "s")


# -- the scorecard -----------------------------------------------------------------------------


def _render_table(card: Scorecard, *, no_color: bool = False) -> None:
    """The scorecard as a rich table (plain text when rich is not installed)."""
    marks = {True: ("pass", "green"), False: ("FAIL", "bold red")}
    failed = sum(not p.passed for p in card.probes)
    summary = (
        f"all {len(card.probes)} probes passed"
        if card.passed
        else f"{failed} of {len(card.probes)} probes failed"
    ) + f" ({_requests(card.requests)} sent to {card.url})"
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for p in card.probes:
            mark = marks[p.passed][0] if p.observed else "n/a"
            click.echo(f"{p.name:<14} {mark:<5} {p.detail}")
        click.echo(summary)
        return
    table = Table(box=box.ROUNDED, caption=summary, caption_justify="left")
    table.add_column("probe", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail")
    for p in card.probes:
        mark, style = marks[p.passed] if p.observed else ("n/a", "dim")
        table.add_row(p.name, f"[{style}]{mark}[/]", p.detail)
    Console(no_color=no_color, highlight=False).print(table)


# -- the command -------------------------------------------------------------------------------


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _target(
    url: str,
    method: str,
    json_body: str | None,
    data: str | None,
    header: Sequence[str],
    header_name: str,
    bare_key: bool,
    concurrency: int,
    timeout: float,
) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter("an http:// or https:// URL with a host", param_hint="URL")
    if json_body is not None and data is not None:
        raise click.UsageError("give --json or --data, not both")
    headers: list[tuple[str, str]] = []
    content_type: str | None = None
    for line in header:
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise click.BadParameter(f"{line!r}: use 'Name: value'", param_hint="-H")
        if name.lower() == header_name.lower():
            raise click.BadParameter(
                f"the checker sets {header_name} itself (a new key per probe)", param_hint="-H"
            )
        if name.lower() == "content-type":
            content_type = value
        else:
            headers.append((name, value))
    body = b""
    if json_body is not None:
        try:
            json.loads(json_body)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--json") from exc
        body = json_body.encode()
        content_type = content_type or "application/json"
    elif data is not None:
        body = data.encode()
    return Target(
        url=url,
        method=method.upper(),
        body=body,
        content_type=content_type,
        headers=tuple(headers),
        key_header=header_name,
        bare_keys=bare_key,
        concurrency=concurrency,
        timeout=timeout,
    )


@click.command("check")
@click.argument("url")
@click.option("--method", "-X", default="POST", show_default=True, help="The request's method.")
@click.option("--json", "json_body", metavar="BODY", help="A JSON body (application/json).")
@click.option("--data", "-d", metavar="BODY", help="A raw body (its type with -H).")
@click.option(
    "-H", "--header", multiple=True, metavar="'NAME: VALUE'", help="A header, e.g. credentials."
)
@click.option(
    "--header-name", default="Idempotency-Key", show_default=True, help="The key's header."
)
@click.option(
    "--bare-key",
    is_flag=True,
    help="Send keys as bare tokens (Stripe's form), not RFC 9651 strings (the IETF draft's).",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(2, 100),
    default=10,
    show_default=True,
    help="Duplicates sent at once by the concurrent probe.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for each answer.",
)
@click.option("--yes", "-y", is_flag=True, help="Send without asking (needed without a terminal).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="A table, or JSON for scripts.",
)
@click.option("--no-color", is_flag=True, help="Plain output (NO_COLOR works too).")
def check(
    url: str,
    method: str,
    json_body: str | None,
    data: str | None,
    header: tuple[str, ...],
    header_name: str,
    bare_key: bool,
    concurrency: int,
    timeout: float,
    yes: bool,
    fmt: str,
    no_color: bool,
) -> None:
    """Probe URL for idempotent behaviour (DESIGN section 6) and print a scorecard.

    Sends the request given (--method, --json or --data, -H) with new idempotency keys:
    replayed, duplicated at once, reused with another body, with malformed keys and without
    one. These are real requests with real effects: the plan is printed first, and asked
    about on a terminal (--yes to skip; required without a terminal). Exit status: 0 every
    probe passed, 1 one failed, 2 the check could not run.
    """
    target = _target(
        url, method, json_body, data, header, header_name, bare_key, concurrency, timeout
    )
    try:
        import httpx  # noqa: F401  (the probes' client; not a dependency of idempo itself)
    except ImportError as exc:
        raise _CouldNotRun("idempo check needs httpx: pip install 'idempo[client]'") from exc
    run = uuid.uuid4().hex[:12]
    click.echo(_announce(target, run), err=True)
    if not yes:
        if sys.stdin is None or not sys.stdin.isatty():
            raise _CouldNotRun("no terminal to confirm on: pass --yes to send; nothing was sent")
        try:
            confirmed = click.confirm("Send them?", default=False, err=True)
        except click.Abort:  # Ctrl-C or end of input at the prompt: a no, not click's exit 1
            confirmed = False
        if not confirmed:
            raise _CouldNotRun("declined: nothing was sent")
    try:
        card = asyncio.run(run_check(target, run=run))
    except CheckError as exc:
        raise _CouldNotRun(str(exc)) from exc
    if fmt == "json":
        click.echo(json.dumps(card.as_json(), indent=2))
    else:
        _render_table(card, no_color=no_color)
    click.get_current_context().exit(0 if card.passed else 1)
