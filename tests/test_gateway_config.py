"""The gateway's configuration: the TOML file, the flags over it, and errors naming the line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from idempo.cli import main
from idempo.gateway.app import http_options, scope_function
from idempo.gateway.config import ConfigError, GatewayConfig, RouteRule, load

FULL = """\
upstream = "http://127.0.0.1:3000/api"
store = "redis://127.0.0.1:6379/0"
listen = "0.0.0.0:8080"
admin = "127.0.0.1:9090"
workers = 4
required = false
methods = ["post", "PATCH"]
ttl = 3600
lease = 10.5
wait = 2
replay_cache = 1.5
host = "client"

[store_options]
prefix = "gw:"

[scope]
headers = ["X-Tenant"]
cookies = ["sid"]

[limits]
max_request_bytes = 1000
max_header_bytes = 2000

[timeouts]
connect = 1
read = 2.5

[[routes]]
path = "/charges/*"
required = true
methods = ["POST"]

[[routes]]
path = "/health"
enabled = false
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def test_a_full_file_loads(tmp_path: Path) -> None:
    """Every key of the file lands in the configuration, method names upper-cased."""
    config = load(write(tmp_path, FULL)).validate()
    assert config.upstream == "http://127.0.0.1:3000/api"
    assert config.workers == 4
    assert config.methods == ("POST", "PATCH")
    assert (config.ttl, config.lease, config.wait, config.host) == (3600, 10.5, 2, "client")
    assert config.store_options == {"prefix": "gw:"}
    assert config.replay_cache == 1.5
    assert (config.scope_headers, config.scope_cookies) == (("x-tenant",), ("sid",))
    assert (config.limits.max_request_bytes, config.limits.max_header_bytes) == (1000, 2000)
    assert config.limits.max_stored_bytes == 1 << 20  # unset: the default
    assert (config.timeouts.connect, config.timeouts.read) == (1, 2.5)
    assert config.routes == (
        RouteRule("/charges/*", required=True, methods=("POST",)),
        RouteRule("/health", enabled=False),
    )


def test_options_reach_the_middleware(tmp_path: Path) -> None:
    """Routes, ttl, lease and limits become the middleware's options."""
    options = http_options(load(write(tmp_path, FULL)))
    routes = list(options["routes"])
    assert routes[0].required is True
    assert routes[0].methods == frozenset({"POST"})
    assert routes[1].enabled is False
    assert (options["ttl"], options["lease"], options["wait"]) == (3600, 10.5, 2)
    assert options["max_request_bytes"] == 1000
    assert options["replay_cache"] == 1.5


def test_scope_from_the_configured_header_and_cookie() -> None:
    """The scope hashes the configured header, else the session cookie, else is anonymous."""
    scope = scope_function(("x-tenant",), ("sid",), "secret")
    a, b = scope({"x-tenant": "a"}), scope({"x-tenant": "b"})
    assert a != b
    assert a.startswith("principal:")
    assert "tenant-secret" not in scope({"x-tenant": "tenant-secret"})  # hashed, not in clear
    assert scope({"authorization": "Bearer x"}) == "anonymous"  # not a configured header
    by_cookie = scope({"cookie": "theme=dark; sid=s1"})
    assert by_cookie.startswith("principal:")
    assert by_cookie != scope({"cookie": "sid=s2"})
    assert scope({"cookie": "theme=dark"}) == "anonymous"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("workers = 0\n", ":1: workers: must be at least 1"),
        ('\n\nttl = "long"\n', ":3: ttl: expected an integer or a number, got str"),
        ("lease = -1\n", ":1: lease: must not be negative"),
        ("replay_cache = -1\n", ":1: replay_cache: must not be negative"),
        ("wrokers = 2\n", ":1: wrokers: unknown key"),
        ('methods = ["POST", "FETCH"]\n', ":1: methods: unknown method(s) FETCH"),
        ('host = "proxy"\n', ':1: host: expected "upstream" or "client"'),
        ('listen = "8080"\n', ":1: listen: listen '8080' is not HOST:PORT"),
        ("[limits]\nmax_body = 5\n", ":2: limits.max_body: unknown key"),
        ("[limits]\nmax_request_bytes = true\n", ":2: limits.max_request_bytes: expected"),
        ("[timeouts]\n\nread = [1]\n", ":3: timeouts.read: expected"),
        ('[scope]\nheaders = "x"\n', ":2: scope.headers: expected a list"),
        ("[[routes]]\nenabled = true\n", ":1: routes[0].path: every route needs a path"),
        (
            '[[routes]]\npath = "/a"\n\n[[routes]]\npath = "/b"\nmethod = ["POST"]\n',
            ":6: routes[1].method: unknown key",
        ),
        ('[[routes]]\npath = "b"\n', ":2: routes[0].path: a path starts with /"),
        (
            '[[routes]]\npath = "/b"\nrequired = "yes"\n',
            ":3: routes[0].required: expected a boolean",
        ),
        ("[store_options]\nprefix = [1]\n", ":2: store_options.prefix: expected"),
    ],
)
def test_a_bad_file_names_the_line_and_key(tmp_path: Path, text: str, where: str) -> None:
    """Each kind of mistake is refused with the file, line and key in the message."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(path + where), str(caught.value)


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    """A syntax error says where, as tomllib reports it."""
    path = write(tmp_path, 'upstream = "http://x"\nttl = = 3\n')
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2"):
        load(path)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (GatewayConfig(store="memory://"), "no upstream"),
        (GatewayConfig(upstream="ftp://x", store="memory://"), "not an http"),
        (GatewayConfig(upstream="http://x"), "no store"),
        (GatewayConfig(upstream="http://x", store="memory://", workers=2), "one store per process"),
        (
            GatewayConfig(upstream="http://x", store="memory://", admin="h:1", listen="h:1"),
            "same address",
        ),
    ],
)
def test_validation_of_the_whole(config: GatewayConfig, message: str) -> None:
    """What only flags and file together can tell is checked before serving."""
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_the_command_reports_a_bad_file_as_a_usage_error(tmp_path: Path) -> None:
    """`idempo gateway --config` with a bad file exits 2 with the line in the message."""
    path = write(tmp_path, '[timeouts]\nread = "slow"\n')
    result = CliRunner().invoke(
        main,
        ["gateway", "--upstream", "http://127.0.0.1:1", "--store", "memory://", "--config", path],
    )
    assert result.exit_code == 2
    assert f"{path}:2: timeouts.read" in result.output


def test_flags_are_required_without_a_file() -> None:
    """Without --upstream (or a file that sets it) the command refuses to start."""
    result = CliRunner().invoke(main, ["gateway", "--store", "memory://"])
    assert result.exit_code == 2
    assert "no upstream" in result.output


def test_the_app_factory_for_other_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """from_environment reads the file, lets the variables override it, and has no admin."""
    from idempo.gateway.app import from_environment

    monkeypatch.setenv("IDEMPO_GATEWAY_CONFIG", write(tmp_path, 'store = "redis://x"\nttl = 5\n'))
    monkeypatch.setenv("IDEMPO_GATEWAY_UPSTREAM", "http://127.0.0.1:1")
    monkeypatch.setenv("IDEMPO_GATEWAY_STORE", "memory://")
    app = from_environment()
    assert (app.config.upstream, app.config.store, app.config.ttl) == (
        "http://127.0.0.1:1",
        "memory://",
        5,
    )
    assert app.admin_port is None
