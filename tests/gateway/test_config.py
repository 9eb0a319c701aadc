from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, GatewayConfig, IssuerConfig, RouteConfig, load_config, parse_config
from tests.gateway.conftest import PROOF_SECRET

ENV = {"EDGE_PROOF_SECRET": PROOF_SECRET}

ISSUE_EXAMPLE = """
[[issuers]]
issuer = "http://127.0.0.1:8000"            # exact match against the token's iss
audiences = ["http://127.0.0.1:8000"]       # required; the token's aud must contain one of these
jwks_url = "http://127.0.0.1:8001/api/auth/jwks"
algorithms = ["EdDSA", "ES256", "RS256"]    # optional allowlist; asymmetric only

[[routes]]
path = "/api/auth/{rest:path}"              # Starlette path-template syntax
upstream = "http://127.0.0.1:8001"          # an origin; the request path is forwarded unchanged
auth = "public"                             # public | authenticated | owner

[[routes]]
path = "/api/{user_id}/{rest:path}"
upstream = "http://127.0.0.1:8002"
auth = "owner"                              # valid JWT and path user_id == sub, else 403
"""


def test_issue_example_parses_with_documented_defaults(tmp_path: Path) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text(ISSUE_EXAMPLE)
    config = load_config(file, ENV)
    assert config == GatewayConfig(
        issuers=(
            IssuerConfig(
                issuer="http://127.0.0.1:8000",
                audiences=("http://127.0.0.1:8000",),
                jwks_url="http://127.0.0.1:8001/api/auth/jwks",
            ),
        ),
        routes=(
            RouteConfig(
                path="/api/auth/{rest:path}", upstream="http://127.0.0.1:8001", auth="public", forward_token=True
            ),
            RouteConfig(path="/api/{user_id}/{rest:path}", upstream="http://127.0.0.1:8002", auth="owner"),
        ),
        proof_secrets=(PROOF_SECRET.encode(),),
    )
    assert config.issuers[0].algorithms == ("EdDSA", "ES256", "RS256")
    assert (config.livez_path, config.readyz_path, config.metrics_path) == ("/livez", "/readyz", "/metrics")
    assert (config.realm, config.leeway, config.token_cache_size, config.max_token_bytes) == (
        "gateway",
        30,
        100_000,
        8192,
    )
    assert config.routes[1].forward_token is False
    assert config.routes[1].max_body_bytes == 10_485_760
    assert config.fast_lane is True
    assert config.issuer("http://127.0.0.1:8000") is config.issuers[0]


def test_docstring_example_parses() -> None:
    """The module docstring is the operator documentation (copied into the README): it must stay valid."""
    import gateway.config

    doc = gateway.config.__doc__ or ""
    body = doc[doc.index("[server]") : doc.index("The environment supplies")]
    token = "Wq3-fR8_zL1xN6vB0kJ5tH2yC9mD4sGaPeUo7iTr"
    config = parse_config(tomllib.loads(body.replace("\\\\", "\\")), {**ENV, "IDENTITY_REVOCATION_FEED_TOKEN": token})
    assert config.issuers[0].revocation_token == token  # the example's revocation_token_env names this variable
    assert config.routes[0].methods == ("GET", "POST", "HEAD")
    assert config.routes[0].required_claims == {"email_verified": True}
    assert config.routes[0].issuers == ("https://id.example",)


def test_every_key_set() -> None:
    config = parse_config(
        {
            "server": {
                "realm": "edge",
                "leeway": 5,
                "trusted_proxies": ["10.0.0.0/8", "::1"],
                "token_cache_size": 10,
                "max_token_bytes": 4096,
                "fast_lane": False,
                "timeout": 7,
                "connect_timeout": 1.5,
                "max_body_bytes": 100,
                "min_body_rate": 2000,
            },
            "health": {"livez_path": "/_/live", "readyz_path": "/_/ready", "metrics_path": ""},
            "proof": {"secret_env": "MY_SECRET"},
            "issuers": [
                {
                    "issuer": "https://id",
                    "audiences": ["a", "b"],
                    "jwks_url": "https://id/jwks?v=1",
                    "algorithms": ["ES384", "PS256"],
                    "jwks_ttl": 60,
                    "jwks_stale_for": 0,
                    "jwks_timeout": 0.5,
                    "jwks_max_bytes": 2048,
                    "jwks_refetch_cooldown": 0,
                }
            ],
            "routes": [
                {"path": "/a", "upstream": "https://up.example:8443/", "auth": "authenticated"},
                {
                    "path": "/b/{user_id}",
                    "upstream": "http://up",
                    "auth": "owner",
                    "methods": ["PUT"],
                    "issuers": ["https://id"],
                    "timeout": 2,
                    "connect_timeout": 0.25,
                    "max_body_bytes": 0,
                    "min_body_rate": 0,
                    "forward_token": True,
                    "required_claims": {"role": "admin", "level": 3},
                },
            ],
        },
        {"MY_SECRET": PROOF_SECRET + "," + PROOF_SECRET[::-1]},
    )
    assert config.realm == "edge" and config.leeway == 5 and config.fast_lane is False
    assert config.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert config.metrics_path is None
    assert config.proof_secrets == (PROOF_SECRET.encode(), PROOF_SECRET[::-1].encode())
    assert config.issuers[0].algorithms == ("ES384", "PS256")
    assert config.issuers[0].jwks_max_bytes == 2048
    first, second = config.routes
    assert first.upstream == "https://up.example:8443"
    assert (first.timeout, first.connect_timeout, first.max_body_bytes) == (7.0, 1.5, 100)
    assert (first.min_body_rate, second.min_body_rate) == (2000, None)  # the server default, and 0 = off
    assert first.forward_token is False and first.methods is None and first.issuers is None
    assert second.methods == ("PUT",)
    assert (second.timeout, second.connect_timeout, second.max_body_bytes) == (2.0, 0.25, None)
    assert second.forward_token is True
    assert second.required_claims == {"role": "admin", "level": 3}


def base(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads(ISSUE_EXAMPLE)
    for path, value in changes.items():
        target: Any = data
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target.setdefault(key, {})
        target[keys[-1]] = value
    return data


ISSUER0 = "issuers__0__"
ROUTE1 = "routes__1__"


@pytest.mark.parametrize(
    ("data", "environ", "problem"),
    [
        pytest.param(base(listen=":80"), ENV, "listen: unknown key", id="unknown top-level key"),
        pytest.param(base(server__port=1), ENV, "server.port: unknown key", id="unknown server key"),
        pytest.param(base(health__path="/h"), ENV, "health.path: unknown key", id="unknown health key"),
        pytest.param(base(**{ISSUER0 + "jku": "x"}), ENV, "issuers[0].jku: unknown key", id="unknown issuer key"),
        pytest.param(
            base(**{ROUTE1 + "auth_mode": "x"}), ENV, "routes[1].auth_mode: unknown key", id="unknown route key"
        ),
        pytest.param(base(server=[1]), ENV, "server: must be a table", id="server not a table"),
        pytest.param(base(routes={"path": "/"}), ENV, "routes: must be an array of tables", id="routes not an array"),
        pytest.param(base(**{ROUTE1 + "auth": "admin"}), ENV, "routes[1].auth: must be one of", id="unknown auth"),
        pytest.param(base(**{ROUTE1 + "auth": True}), ENV, "routes[1].auth: must be a string", id="auth wrong type"),
        pytest.param(
            base(**{ROUTE1 + "path": "/api/{owner}/{rest:path}"}),
            ENV,
            "routes[1].path: an owner route needs a {user_id}",
            id="owner without user_id",
        ),
        pytest.param(
            base(**{ROUTE1 + "path": "/api/{user_id:path}"}),
            ENV,
            "{user_id} must be a single segment",
            id="user_id as path",
        ),
        pytest.param(base(**{ROUTE1 + "path": "/api/{x"}), ENV, "routes[1].path: invalid template", id="bad template"),
        pytest.param(base(**{ISSUER0 + "algorithms": ["HS256"]}), ENV, "'HS256' is symmetric", id="HS256"),
        pytest.param(base(**{ISSUER0 + "algorithms": ["none"]}), ENV, "'none' is symmetric or unsigned", id="none"),
        pytest.param(base(**{ISSUER0 + "algorithms": ["NONE"]}), ENV, "'NONE' is symmetric or unsigned", id="NONE"),
        pytest.param(base(**{ISSUER0 + "algorithms": ["RS1"]}), ENV, "unknown algorithm 'RS1'", id="unknown alg"),
        pytest.param(base(**{ISSUER0 + "algorithms": []}), ENV, "algorithms: must not be empty", id="empty algs"),
        pytest.param(base(**{ISSUER0 + "audiences": []}), ENV, "audiences: must not be empty", id="empty audiences"),
        pytest.param(base(**{ISSUER0 + "audiences": [""]}), ENV, "must not contain empty strings", id="empty audience"),
        pytest.param(base(**{ISSUER0 + "audiences": "x"}), ENV, "audiences: must be a list of strings", id="aud str"),
        pytest.param(base(**{ISSUER0 + "issuer": ""}), ENV, "issuers[0].issuer: must not be empty", id="empty iss"),
        pytest.param(
            {**base(), "issuers": base()["issuers"] * 2},
            ENV,
            "issuers[1].issuer: duplicate issuer 'http://127.0.0.1:8000'",
            id="duplicate issuer",
        ),
        pytest.param(
            base(**{ISSUER0 + "jwks_url": "ftp://x/jwks"}), ENV, "jwks_url: must be an http", id="jwks_url scheme"
        ),
        pytest.param(base(**{ISSUER0 + "jwks_url": "http:///jwks"}), ENV, "jwks_url: must be an http", id="no host"),
        pytest.param(
            base(**{ISSUER0 + "jwks_url": "http://h:99999/"}), ENV, "jwks_url: is not a valid URL", id="bad port"
        ),
        pytest.param(
            base(**{ISSUER0 + "jwks_url": "http://u:p@h/jwks"}), ENV, "must not contain credentials", id="credentials"
        ),
        pytest.param(base(**{ISSUER0 + "jwks_url": 5}), ENV, "jwks_url: must be a string", id="jwks_url type"),
        pytest.param(
            base(**{ROUTE1 + "upstream": "http://127.0.0.1:8002/api"}),
            ENV,
            "upstream: must be an origin",
            id="upstream with path",
        ),
        pytest.param(
            base(**{ROUTE1 + "upstream": "http://127.0.0.1:8002?x=1"}),
            ENV,
            "upstream: must be an origin",
            id="upstream with query",
        ),
        pytest.param(base(**{ROUTE1 + "upstream": "127.0.0.1:8002"}), ENV, "upstream: must be an http", id="no scheme"),
        pytest.param(base(**{ROUTE1 + "timeout": "5"}), ENV, "timeout: must be a number", id="timeout string"),
        pytest.param(base(**{ROUTE1 + "timeout": True}), ENV, "timeout: must be a number", id="timeout boolean"),
        pytest.param(base(**{ROUTE1 + "timeout": -1}), ENV, "timeout: must be between", id="timeout negative"),
        pytest.param(
            base(**{ROUTE1 + "max_body_bytes": 1.5}), ENV, "max_body_bytes: must be an integer", id="body float"
        ),
        pytest.param(base(**{ROUTE1 + "min_body_rate": -1}), ENV, "min_body_rate: must be between", id="rate negative"),
        pytest.param(
            base(**{ROUTE1 + "min_body_rate": 0.5}), ENV, "min_body_rate: must be an integer", id="rate float"
        ),
        pytest.param(base(**{ROUTE1 + "forward_token": "yes"}), ENV, "forward_token: must be true or false", id="bool"),
        pytest.param(base(**{ROUTE1 + "methods": ["get"]}), ENV, "upper-case HTTP method", id="lower-case method"),
        pytest.param(base(**{ROUTE1 + "methods": []}), ENV, "methods: must not be empty", id="empty methods"),
        pytest.param(base(**{ROUTE1 + "methods": ["GET", "GET"]}), ENV, "must not contain duplicates", id="dup method"),
        pytest.param(
            base(**{ROUTE1 + "issuers": ["https://other"]}),
            ENV,
            "'https://other' is not a configured issuer",
            id="unknown route issuer",
        ),
        pytest.param(
            base(routes__0__issuers=["http://127.0.0.1:8000"]),
            ENV,
            "routes[0].issuers: a public route verifies no token",
            id="issuers on public route",
        ),
        pytest.param(
            base(routes__0__required_claims={"role": "x"}),
            ENV,
            "routes[0].required_claims: a public route",
            id="required claims on public route",
        ),
        pytest.param(
            base(**{ROUTE1 + "required_claims": {"role": 1.5}}),
            ENV,
            "required_claims.role: must be a string",
            id="required claim float",
        ),
        pytest.param(
            base(**{ROUTE1 + "required_claims": {"aud": "x"}}),
            ENV,
            "required_claims.aud: is checked by token verification",
            id="required claim aud",
        ),
        pytest.param(base(**{ROUTE1 + "required_claims": ["x"]}), ENV, "must be a table", id="required claims list"),
        pytest.param({**base(), "issuers": []}, ENV, "an owner route needs at least one [[issuers]]", id="no issuers"),
        pytest.param(base(server__realm='a"b'), ENV, "server.realm: must be non-empty printable", id="realm quote"),
        pytest.param(base(server__realm=""), ENV, "server.realm: must be non-empty printable", id="realm empty"),
        pytest.param(base(server__leeway=301), ENV, "server.leeway: must be between 0 and 300", id="leeway big"),
        pytest.param(base(server__leeway=1.5), ENV, "server.leeway: must be an integer", id="leeway float"),
        pytest.param(
            base(server__trusted_proxies=["10.0.0.1/8"]), ENV, "'10.0.0.1/8' is not an IP", id="proxy host bits"
        ),
        pytest.param(base(server__trusted_proxies=["localhost"]), ENV, "'localhost' is not an IP", id="proxy name"),
        pytest.param(base(server__token_cache_size=-1), ENV, "token_cache_size: must be between", id="cache size"),
        pytest.param(base(server__fast_lane="yes"), ENV, "server.fast_lane: must be true or false", id="fast lane"),
        pytest.param(base(health__livez_path="livez"), ENV, "livez_path: must be a plain absolute path", id="rel"),
        pytest.param(base(health__readyz_path="/ready z"), ENV, "readyz_path: must be a plain", id="space in path"),
        pytest.param(base(health__readyz_path="/livez"), ENV, "health: livez_path, readyz_path", id="same paths"),
        pytest.param(base(health__metrics_path="/a/../m"), ENV, "metrics_path: must be a plain", id="dot segment"),
        pytest.param(base(health__livez_path="/a//b"), ENV, "livez_path: must be a plain", id="empty segment"),
        pytest.param(base(), {}, "environment: EDGE_PROOF_SECRET is not set", id="no proof secret"),
        pytest.param(base(), {"EDGE_PROOF_SECRET": "short"}, "at least 32 are required", id="short proof secret"),
        pytest.param(
            base(proof__secret_env="OTHER"), ENV, "environment OTHER: EDGE_PROOF_SECRET is not set", id="secret_env"
        ),
        pytest.param(base(**{ISSUER0 + "jwks_ttl": 0}), ENV, "jwks_ttl: must be between", id="ttl zero"),
        pytest.param(base(**{ISSUER0 + "jwks_max_bytes": 10}), ENV, "jwks_max_bytes: must be between", id="tiny cap"),
        pytest.param(base(**{ISSUER0 + "jwks_timeout": float("nan")}), ENV, "must be a number", id="NaN timeout"),
    ],
)
def test_problem(data: dict[str, Any], environ: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, environ)
    assert any(problem in p for p in caught.value.problems), caught.value.problems
    assert problem in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    data = base(
        listen=1,
        server__leeway="x",
        **{
            ISSUER0 + "algorithms": ["HS256", "none"],
            ISSUER0 + "audiences": [],
            ROUTE1 + "auth": "owners",
            ROUTE1 + "upstream": "http://x/y",
            "routes__0__bogus": 1,
        },
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(data, {})
    assert caught.value.problems == [
        "listen: unknown key",
        "server.leeway: must be an integer, not a string",
        "environment: EDGE_PROOF_SECRET is not set; generate one with: "
        "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
        "issuers[0].audiences: must not be empty",
        "issuers[0].algorithms: 'HS256' is symmetric or unsigned; only asymmetric algorithms",
        "issuers[0].algorithms: 'none' is symmetric or unsigned; only asymmetric algorithms",
        "routes[0].bogus: unknown key",
        "routes[1].upstream: must be an origin (scheme://host[:port]) without path or query, not 'http://x/y'",
        "routes[1].auth: must be one of public, authenticated, owner, not 'owners'",
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param("[[routes]\n", "invalid TOML", id="invalid TOML"),
        pytest.param(None, "cannot read", id="missing file"),
    ],
)
def test_load_errors(tmp_path: Path, content: str | None, problem: str) -> None:
    file = tmp_path / "gateway.toml"
    if content is not None:
        file.write_text(content)
    with pytest.raises(ConfigError, match=problem):
        load_config(file, ENV)


def test_no_routes_and_no_issuers_is_a_valid_empty_gateway() -> None:
    config = parse_config({}, ENV)
    assert config.routes == () and config.issuers == ()
