"""Configuration files for the processes under test (pure: text in, text out).

- the trivial upstream: nginx answering every path with a small constant body, and serving the bench's
  JWKS at ``/jwks.json`` so our gateway fetches its keys over HTTP as in production;
- nginx as a plain reverse proxy (keep-alive to the upstream): the cost of one proxy hop;
- HAProxy with ``jwt_verify``: the reference an operator would pick. It checks what our gateway checks on an
  owner route: ``alg`` pinned, signature, ``iss``, ``aud``, ``exp``, and the path's user id equal to ``sub``
  (401 / 403 like ours), then replaces ``X-User-Id`` with ``sub``;
- our gateway's TOML: one issuer (JWKS from the upstream) and the owner route to the upstream.
"""

from __future__ import annotations

from pathlib import Path

UPSTREAM_BODY = '{"ok":true,"from":"bench-upstream"}'


def _nginx_frame(directory: Path, name: str, http_body: str) -> str:
    tmp = directory / f"{name}-tmp"
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {directory / f"{name}.pid"};
error_log {directory / f"{name}-error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{http_body}
}}
"""


def nginx_upstream(directory: Path, port: int, jwks_path: Path) -> str:
    return _nginx_frame(
        directory,
        "upstream",
        f"""
    server {{
        listen 127.0.0.1:{port};
        location = /jwks.json {{
            default_type application/json;
            alias {jwks_path};
        }}
        location / {{
            default_type application/json;
            return 200 '{UPSTREAM_BODY}';
        }}
    }}
""",
    )


def nginx_proxy(directory: Path, port: int, upstream_port: int) -> str:
    return _nginx_frame(
        directory,
        "nginx-proxy",
        f"""
    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
""",
    )


def haproxy(port: int, upstream_port: int, *, alg: str, public_pem: Path, issuer: str, audience: str) -> str:
    """HAProxy 2.5+ ``jwt_verify`` with the checks of an owner route (HAProxy has no verified-token cache:
    every request parses the token and checks its signature)."""
    return f"""
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive

frontend bench_jwt
    bind 127.0.0.1:{port}
    http-request deny deny_status 401 unless {{ req.hdr(authorization) -m found }}
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request deny deny_status 401 unless {{ var(txn.alg) -m str {alg} }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{public_pem}") -m int 1 }}
    http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
    http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('$.sub')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 unless {{ var(txn.iss) -m str {issuer} }}
    http-request deny deny_status 401 unless {{ var(txn.aud) -m str {audience} }}
    http-request deny deny_status 401 unless {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
    http-request set-var(txn.path_user) path,field(3,/)
    http-request deny deny_status 403 unless {{ path_beg /api/ }} {{ var(txn.path_user),strcmp(txn.sub) eq 0 }}
    http-request del-header authorization
    http-request set-header x-user-id %[var(txn.sub)]
    default_backend bench_upstream

backend bench_upstream
    http-reuse always
    server upstream 127.0.0.1:{upstream_port}
"""


def gateway_toml(upstream_port: int, *, issuer: str, audience: str) -> str:
    return f"""
# Written by `make bench` (bench/configs.py): one issuer whose keys the trivial upstream serves, and one
# owner route to that upstream, as deploy/gateway.toml routes /api/{{user_id}}/... to the tasks backend.
[[issuers]]
issuer = "{issuer}"
audiences = ["{audience}"]
jwks_url = "http://127.0.0.1:{upstream_port}/jwks.json"
algorithms = ["EdDSA", "ES256", "RS256"]

[[routes]]
path = "/api/{{user_id}}/{{rest:path}}"
upstream = "http://127.0.0.1:{upstream_port}"
auth = "owner"
"""
