from __future__ import annotations

import pytest

from gateway.config import RouteConfig
from gateway.errors import MethodNotAllowed, UnsafePath
from gateway.routing import Router, TemplateError, canonical_path, compile_template

UNSAFE = [
    # not origin-form
    pytest.param(b"", id="empty"),
    pytest.param(b"api/x", id="relative"),
    pytest.param(b"http://evil.example/api/x", id="absolute-form"),
    pytest.param(b"//evil.example/api", id="network-path (empty first segment)"),
    pytest.param(b"*", id="asterisk-form"),
    # encoded separators and dots
    pytest.param(b"/api/alice%2Fbob", id="encoded slash"),
    pytest.param(b"/api/alice%2fbob", id="encoded slash lower-case"),
    pytest.param(b"/api/alice%5Cbob", id="encoded backslash"),
    pytest.param(b"/api/%2e%2e/admin", id="encoded dot-dot"),
    pytest.param(b"/api/%2E/x", id="encoded dot"),
    pytest.param(b"/api/alice.%2e/x", id="half-encoded dot-dot"),
    pytest.param(b"/api/alice%3Bx/tasks", id="encoded semicolon"),
    pytest.param(b"/api/alice%00/tasks", id="encoded NUL"),
    pytest.param(b"/api/alice%0a/tasks", id="encoded LF"),
    pytest.param(b"/api/alice%0D/tasks", id="encoded CR"),
    pytest.param(b"/api/alice%09/tasks", id="encoded tab"),
    pytest.param(b"/api/alice%7F/tasks", id="encoded DEL"),
    pytest.param(b"/api/alice%252F/tasks", id="double-encoded slash"),
    pytest.param(b"/api/alice%25/tasks", id="encoded percent"),
    pytest.param(b"/api/alice%3F/tasks", id="encoded question mark"),
    pytest.param(b"/api/alice%23/tasks", id="encoded hash"),
    pytest.param(b"/api/%61lice/tasks", id="encoded unreserved letter"),
    pytest.param(b"/api/alice%2D1/tasks", id="encoded unreserved hyphen"),
    pytest.param(b"/api/alice%7E/tasks", id="encoded unreserved tilde"),
    # invalid escapes
    pytest.param(b"/api/alice%", id="lone percent at end"),
    pytest.param(b"/api/alice%4", id="truncated escape"),
    pytest.param(b"/api/alice%zz/x", id="non-hex escape"),
    pytest.param(b"/api/alice%+1/x", id="sign in escape"),
    pytest.param(b"/api/alice% 1/x", id="space in escape"),
    # raw characters
    pytest.param(b"/api/alice\\bob", id="raw backslash"),
    pytest.param(b"/api/alice;jsessionid=1/tasks", id="raw semicolon (matrix params)"),
    pytest.param(b"/api/alice bob", id="raw space"),
    pytest.param(b"/api/alice\x00", id="raw NUL"),
    pytest.param(b"/api/alice\r\nx", id="raw CRLF"),
    pytest.param(b"/api/alice\tx", id="raw tab"),
    pytest.param(b"/api/alice\x7f", id="raw DEL"),
    pytest.param(b"/api/al\xc3\xa9", id="raw UTF-8 (must be percent-encoded)"),
    pytest.param(b"/api/alice#frag", id="raw hash"),
    pytest.param(b"/api/alice?x", id="raw question mark in raw_path"),
    pytest.param(b"/api/<script>", id="raw angle brackets"),
    pytest.param(b'/api/"x"', id="raw double quote"),
    pytest.param(b"/api/{x}", id="raw braces"),
    pytest.param(b"/api/a|b", id="raw pipe"),
    pytest.param(b"/api/a^b", id="raw caret"),
    pytest.param(b"/api/a`b", id="raw backtick"),
    pytest.param(b"/api/[::1]", id="raw brackets"),
    # segments
    pytest.param(b"/api//tasks", id="empty segment"),
    pytest.param(b"/api/alice//", id="double trailing slash"),
    pytest.param(b"/api/./tasks", id="dot segment"),
    pytest.param(b"/api/../admin", id="dot-dot segment"),
    pytest.param(b"/api/alice/..", id="trailing dot-dot"),
    pytest.param(b"/api/alice/.", id="trailing dot"),
    pytest.param(b"/api/.../x", id="triple-dot segment"),
    pytest.param(b"/..", id="root dot-dot"),
    pytest.param(b"/api/%20alice/x", id="leading space in segment"),
    pytest.param(b"/api/alice%20/x", id="trailing space in segment"),
    pytest.param(b"/api/%20/x", id="space-only segment"),
    # decoding
    pytest.param(b"/api/%C3/x", id="truncated UTF-8"),
    pytest.param(b"/api/%FF/x", id="invalid UTF-8 byte"),
    pytest.param(b"/api/%C0%AF/x", id="overlong slash"),
    pytest.param(b"/api/%C0%AE%C0%AE/x", id="overlong dots"),
    pytest.param(b"/api/%ED%A0%80/x", id="UTF-16 surrogate"),
    pytest.param(b"/api/alice%EF%BC%8Fbob", id="fullwidth solidus"),
    pytest.param(b"/api/%EF%BC%8E%EF%BC%8E/x", id="fullwidth dots"),
    pytest.param(b"/api/%E2%80%A4%E2%80%A4/x", id="one dot leaders"),
    pytest.param(b"/api/alice%EF%BC%BCbob", id="fullwidth backslash"),
    pytest.param(b"/api/alice%E2%80%8B/x", id="zero-width space"),
    pytest.param(b"/api/alice%E2%80%AE/x", id="right-to-left override"),
    pytest.param(b"/api/alice%C2%85/x", id="C1 control NEL"),
    pytest.param(b"/api/alice%E2%80%A8/x", id="line separator"),
    pytest.param(b"/api/alice%EE%80%80/x", id="private use"),
    pytest.param(b"/api/alice%EF%BF%BF/x", id="noncharacter"),
    pytest.param(b"/" + b"a" * 9000, id="too long"),
]


@pytest.mark.parametrize("raw", UNSAFE)
def test_unsafe_paths_are_refused(raw: bytes) -> None:
    with pytest.raises(UnsafePath):
        canonical_path(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"/", "/", id="root"),
        pytest.param(b"/api/alice/tasks", "/api/alice/tasks", id="plain"),
        pytest.param(b"/api/alice/tasks/", "/api/alice/tasks/", id="one trailing slash"),
        pytest.param(b"/api/a.b/file.txt", "/api/a.b/file.txt", id="dots inside segments"),
        pytest.param(b"/api/.well-known/x", "/api/.well-known/x", id="leading dot then name"),
        pytest.param(b"/api/al%C3%A9/x", "/api/al\u00e9/x", id="encoded UTF-8"),
        pytest.param(b"/api/al%c3%a9/x", "/api/al\u00e9/x", id="encoded UTF-8 lower-case hex"),
        pytest.param(b"/api/a%20b/x", "/api/a b/x", id="encoded inner space"),
        pytest.param(b"/api/a%40b/x", "/api/a@b/x", id="encoded at"),
        pytest.param(b"/api/a@b:c/x", "/api/a@b:c/x", id="raw at and colon"),
        pytest.param(b"/api/a+b/x", "/api/a+b/x", id="raw plus stays plus"),
        pytest.param(b"/api/a%2Bb/x", "/api/a+b/x", id="encoded plus"),
        pytest.param(b"/api/!$&'()*,=/x", "/api/!$&'()*,=/x", id="sub-delims"),
        pytest.param(b"/api/%E6%97%A5%E6%9C%AC", "/api/\u65e5\u672c", id="CJK"),
        pytest.param(b"/api/a_b-c~d", "/api/a_b-c~d", id="unreserved punctuation"),
    ],
)
def test_safe_paths_decode_once(raw: bytes, expected: str) -> None:
    assert canonical_path(raw) == expected


def route(path: str, auth: str = "public", methods: tuple[str, ...] | None = None, name: str = "") -> RouteConfig:
    return RouteConfig(path=path, upstream=f"http://127.0.0.1:9/{name}".rstrip("/"), auth=auth, methods=methods)  # type: ignore[arg-type]


EXAMPLE = Router(
    [
        route("/api/auth/{rest:path}", name="auth"),
        route("/api/{user_id}/{rest:path}", "owner", name="tasks"),
    ]
)


@pytest.mark.parametrize(
    ("path", "upstream", "params"),
    [
        pytest.param("/api/auth/sign-in/email", "http://127.0.0.1:9/auth", {"rest": "sign-in/email"}, id="auth route"),
        pytest.param("/api/auth/", "http://127.0.0.1:9/auth", {"rest": ""}, id="path param may be empty"),
        pytest.param(
            "/api/alice/tasks", "http://127.0.0.1:9/tasks", {"user_id": "alice", "rest": "tasks"}, id="owner route"
        ),
        pytest.param(
            "/api/alice/tasks/1/done",
            "http://127.0.0.1:9/tasks",
            {"user_id": "alice", "rest": "tasks/1/done"},
            id="path param spans segments",
        ),
        pytest.param("/api/auth/x", "http://127.0.0.1:9/auth", {"rest": "x"}, id="first match wins over owner route"),
        pytest.param("/api/alice", None, None, id="owner route needs the trailing slash"),
        pytest.param("/api/auth", None, None, id="prefix without slash does not match"),
        pytest.param("/other", None, None, id="no match"),
        pytest.param("/API/auth/x", None, None, id="case-sensitive"),
    ],
)
def test_example_routes(path: str, upstream: str | None, params: dict[str, str] | None) -> None:
    match = EXAMPLE.match("GET", path)
    if upstream is None:
        assert match is None
        return
    assert match is not None
    assert match.route.upstream == upstream
    assert match.params == params


@pytest.mark.parametrize(
    ("template", "path", "params"),
    [
        pytest.param("/items/{id:int}", "/items/42", {"id": "42"}, id="int"),
        pytest.param("/items/{id:int}", "/items/4x", None, id="int refuses letters"),
        pytest.param("/items/{id:int}", "/items/-1", None, id="int refuses sign"),
        pytest.param("/items/{id:str}", "/items/a b", {"id": "a b"}, id="explicit str"),
        pytest.param("/items/{id}", "/items/", None, id="str is non-empty"),
        pytest.param("/items/{id}", "/items/a/b", None, id="str is one segment"),
        pytest.param("/items/{id}/", "/items/a/", {"id": "a"}, id="literal trailing slash"),
        pytest.param("/items/{id}/", "/items/a", None, id="literal trailing slash required"),
        pytest.param("/{rest:path}", "/", {"rest": ""}, id="catch-all matches root"),
        pytest.param("/static/a.b+c", "/static/a.b+c", {}, id="regex metacharacters are literal"),
        pytest.param("/static/a.b+c", "/static/aXb+c", None, id="dot is not a wildcard"),
        pytest.param("/x", "/x/", None, id="exact, no implicit trailing slash"),
    ],
)
def test_templates(template: str, path: str, params: dict[str, str] | None) -> None:
    match = Router([route(template)]).match("GET", path)
    assert (match.params if match else None) == params


@pytest.mark.parametrize(
    ("template", "message"),
    [
        pytest.param("api/{x}", "must start with '/'", id="relative"),
        pytest.param("/api/{x:float}", "unknown convertor", id="unknown convertor"),
        pytest.param("/api/{1x}", "invalid parameter name", id="bad name"),
        pytest.param("/api/{}", "invalid parameter name", id="empty braces"),
        pytest.param("/api/{x}/{x}", "appears twice", id="duplicate name"),
        pytest.param("/api/{x", "unbalanced", id="unclosed brace"),
        pytest.param("/api/x}", "unbalanced", id="stray closing brace"),
        pytest.param("/api/{a}{b}", "whole path segment", id="adjacent params"),
        pytest.param("/files/{name}.{ext}", "whole path segment", id="param sharing a segment"),
        pytest.param("/api/{rest:path}/x", "must come last", id="path param not last"),
        pytest.param("/api//x", "not a canonical path", id="literal empty segment"),
        pytest.param("/api/../x", "not a canonical path", id="literal dot segment"),
        pytest.param("/api/%2e/x", "not a canonical path", id="literal encoded dot"),
        pytest.param("/api/caf%C3%A9", "written decoded", id="literal escape"),
    ],
)
def test_bad_templates(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        compile_template(template)


METHODS = Router(
    [
        route("/things", methods=("GET", "HEAD"), name="read"),
        route("/things", methods=("POST",), name="write"),
        route("/only-delete", methods=("DELETE",)),
        route("/any/{rest:path}"),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "upstream", "allow"),
    [
        pytest.param("GET", "/things", "http://127.0.0.1:9/read", None, id="first route by method"),
        pytest.param("POST", "/things", "http://127.0.0.1:9/write", None, id="later route by method"),
        pytest.param("PUT", "/things", None, ("GET", "HEAD", "POST"), id="405 lists every matching route's methods"),
        pytest.param("GET", "/only-delete", None, ("DELETE",), id="405 single route"),
        pytest.param("PATCH", "/any/x", "http://127.0.0.1:9", None, id="no methods means any"),
        pytest.param("GET", "/nothing", None, None, id="404 is None"),
    ],
)
def test_methods(method: str, path: str, upstream: str | None, allow: tuple[str, ...] | None) -> None:
    if allow is not None:
        with pytest.raises(MethodNotAllowed) as caught:
            METHODS.match(method, path)
        assert caught.value.allow == allow
        return
    match = METHODS.match(method, path)
    assert (match.route.upstream if match else None) == upstream


def test_method_mismatch_falls_through_to_a_later_matching_route() -> None:
    router = Router([route("/x/{rest:path}", methods=("GET",), name="a"), route("/{rest:path}", name="b")])
    match = router.match("POST", "/x/y")
    assert match is not None and match.route.upstream == "http://127.0.0.1:9/b"
