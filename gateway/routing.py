"""One canonical path, and the routes matched against it (issue 4, "One canonical path"). Pure: no I/O.

The gateway authorizes on exactly the bytes it forwards: ``raw_path`` goes upstream unchanged, and the access
decision is made on ``canonical_path(raw_path)``, its percent-decoding. That is only sound when every reasonable
backend decodes those bytes to the same string and splits it into the same segments, so anything that some
server, framework or proxy reads differently is refused with 400 (:class:`UnsafePath`) instead of being
normalised one way here and another way upstream:

* not starting with ``/`` (absolute-form ``http://...``, authority-form, ``*``), or empty;
* raw bytes outside RFC 3986 ``pchar`` / ``/``: controls, space, non-ASCII, ``\\``, ``"<>[]^`{|}``, and the raw
  ``;`` too (Tomcat/Spring strip ``;params`` from segments, so ``/api/alice;x/..`` reads differently there);
* an invalid percent-escape (``%``, ``%4``, ``%zz``);
* a percent-escape of ``/`` ``\\`` ``.`` ``;`` ``%`` (double encoding) ``?`` ``#``, of any control character,
  or of an RFC 3986 unreserved character (``%61`` for ``a``: a second spelling of the same path, used only to
  slip past filters; §6.2.2.2 says to decode them, we say to not send them);
* a decoding that is not valid UTF-8 (overlong forms and surrogates included);
* a decoded character that is a Unicode control/format/private/unassigned code point, or whose NFKC form
  contains ``/ \\ . ; % ? #`` (U+FF0F fullwidth solidus, U+FF0E fullwidth full stop, U+2024 one dot
  leader): servers that normalise Unicode would see a separator or a dot segment that we do not;
* longer than 8 KiB (``MAX_PATH_BYTES``);
* an empty segment (``//``, except the single trailing ``/``) or a segment made only of dots (``.``, ``..``,
  ``...``), or a segment with leading or trailing whitespace (Windows and some proxies trim it).

Other percent-escapes are allowed and decoded: ``%20`` (space), reserved characters such as ``%40`` (``@``),
``%3A`` (``:``), ``%2B`` (``+``), and UTF-8 sequences (``%C3%A9``), upper- or lower-case hex. Each decodes to
exactly one string, and because an encoded ``/`` is refused, the decoded path has exactly the segments of the
raw path: a ``{user_id}`` read here is the one the backend reads.

Route templates use Starlette's syntax: ``{name}`` (= ``{name:str}``, one non-empty segment), ``{name:path}``
(the rest, possibly empty, slashes included) and ``{name:int}`` (ASCII digits). Routes are tried in file order and
the first whose template and methods match wins.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from gateway.errors import MethodNotAllowed, UnsafePath

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.config import RouteConfig

_HEX = frozenset(b"0123456789abcdefABCDEF")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar = unreserved / pct-encoded / sub-delims / ":" / "@", minus ";" (see module docstring), plus "/".
_RAW_ALLOWED = _UNRESERVED | frozenset(b"!$&'()*+,=:@/%")
# Bytes that must never appear percent-encoded: separators, dots, double encoding, query/fragment delimiters.
_ENCODED_FORBIDDEN = frozenset(b"/\\.;%?#") | frozenset(range(0x20)) | {0x7F} | _UNRESERVED
_NFKC_FORBIDDEN = frozenset("/\\.;%?#")
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
MAX_PATH_BYTES = 8192
# The common case in one compiled match: non-empty segments of allowed raw bytes without any percent-escape, none
# made only of dots, an optional trailing slash. Such a path decodes to itself and passes every check below.
_PLAIN = re.compile(rb"(?:/(?!\.*(?:/|\Z))[A-Za-z0-9._~!$&'()*+,=:@-]+)+/?|/")


def canonical_path(raw_path: bytes) -> str:
    """The decoded path the access decision is made on, or :class:`UnsafePath` if it has two readings."""
    if not raw_path.startswith(b"/"):
        raise UnsafePath("the path must start with '/' (origin-form, RFC 9112 §3.2.1)")
    if len(raw_path) > MAX_PATH_BYTES:
        raise UnsafePath("the path is too long")
    if _PLAIN.fullmatch(raw_path) is not None:
        return raw_path.decode("ascii")
    return _decode_checked(raw_path)


def _decode_checked(raw_path: bytes) -> str:
    """Every check, byte by byte: the reference for :data:`_PLAIN` (tests compare the two)."""
    if not raw_path.startswith(b"/"):
        raise UnsafePath("the path must start with '/' (origin-form, RFC 9112 §3.2.1)")
    if len(raw_path) > MAX_PATH_BYTES:
        raise UnsafePath("the path is too long")
    decoded = bytearray()
    i, n = 0, len(raw_path)
    while i < n:
        byte = raw_path[i]
        if byte not in _RAW_ALLOWED:
            raise UnsafePath("the path contains a character that is not allowed unencoded")
        if byte == 0x25:  # "%"
            if i + 2 >= n:
                raise UnsafePath("the path has an incomplete percent-escape")
            hi, lo = raw_path[i + 1], raw_path[i + 2]
            if hi not in _HEX or lo not in _HEX:
                raise UnsafePath("the path has an invalid percent-escape")
            value = int(raw_path[i + 1 : i + 3], 16)
            if value in _ENCODED_FORBIDDEN:
                raise UnsafePath("the path percent-encodes a character that must not be encoded")
            decoded.append(value)
            i += 3
            continue
        decoded.append(byte)
        i += 1
    try:
        path = decoded.decode("utf-8")  # strict: no overlong forms, no surrogates
    except UnicodeDecodeError:
        raise UnsafePath("the path does not decode to UTF-8") from None
    if not path.isascii():
        for ch in path:
            if ch.isascii():
                continue
            if unicodedata.category(ch) in _BAD_CATEGORIES:
                raise UnsafePath("the path contains an invisible or unassigned character")
            if _NFKC_FORBIDDEN.intersection(unicodedata.normalize("NFKC", ch)):
                raise UnsafePath("the path contains a look-alike of a separator or dot")
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        if segment == "":
            if index == len(segments) - 1:
                continue  # "/" itself, or one trailing slash
            raise UnsafePath("the path has an empty segment")
        if segment.strip(".") == "":
            raise UnsafePath("the path has a dot segment")
        if segment != segment.strip():
            raise UnsafePath("a path segment starts or ends with whitespace")
    return path


# --- templates ---------------------------------------------------------------------------------------------------

_PARAM = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONVERTORS = {"str": "[^/]+", "path": ".*", "int": "[0-9]+"}


class TemplateError(ValueError):
    """A route template that does not compile (reported by config.py as a config problem)."""


@dataclass(frozen=True)
class Template:
    source: str
    regex: re.Pattern[str]
    params: dict[str, str]  # name -> convertor


def compile_template(source: str) -> Template:
    """Compile a Starlette-style path template. Literal parts must themselves be canonical paths."""
    if not source.startswith("/"):
        raise TemplateError("must start with '/'")
    pattern = ""
    params: dict[str, str] = {}
    literal_probe = ""  # the template with every parameter replaced by a harmless sample
    position = 0
    for match in _PARAM.finditer(source):
        literal = source[position : match.start()]
        pattern += re.escape(literal)
        literal_probe += literal
        name, _, convertor = match.group(1).partition(":")
        convertor = convertor or "str"
        if not _NAME.match(name):
            raise TemplateError(f"invalid parameter name {name!r}")
        if convertor not in _CONVERTORS:
            raise TemplateError(f"unknown convertor {convertor!r} (use str, path or int)")
        if name in params:
            raise TemplateError(f"parameter {name!r} appears twice")
        # A parameter is a whole segment, so a value has one reading ("{a}{b}" or "{name}.{ext}" would split
        # "x.y.z" by regex greediness), and only the last one may be a path.
        if not literal.endswith("/") or source[match.end() : match.end() + 1] not in ("", "/"):
            raise TemplateError(f"parameter {name!r} must be a whole path segment")
        if convertor == "path" and match.end() != len(source):
            raise TemplateError(f"path parameter {name!r} must come last")
        params[name] = convertor
        pattern += f"(?P<{name}>{_CONVERTORS[convertor]})"
        literal_probe += "x" if convertor != "path" else "x/y"
        position = match.end()
    literal = source[position:]
    if "{" in literal or "}" in literal or any("{" in p or "}" in p for p in _literals(source)):
        raise TemplateError("unbalanced '{' or '}'")
    pattern += re.escape(literal)
    literal_probe += literal
    try:
        canonical = canonical_path(literal_probe.encode("utf-8"))
    except UnsafePath as exc:
        raise TemplateError(f"not a canonical path: {exc.message}") from None
    if canonical != literal_probe:
        raise TemplateError("literal parts must be written decoded (no percent-escapes)")
    return Template(source=source, regex=re.compile(pattern), params=params)


def _literals(source: str) -> list[str]:
    return _PARAM.split(source)[::2]


class RouteMatch(NamedTuple):  # a tuple: built on every request, several times cheaper than a frozen dataclass
    route: RouteConfig
    params: dict[str, str]


class Router:
    """First match in file order wins. A path that only matches routes whose ``methods`` exclude the request's
    method raises :class:`MethodNotAllowed` with the union of their methods; no path match returns None."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self._routes = [(route, compile_template(route.path)) for route in routes]

    def match(self, method: str, path: str) -> RouteMatch | None:
        allowed: set[str] = set()
        for route, template in self._routes:
            found = template.regex.fullmatch(path)
            if found is None:
                continue
            if route.methods is not None and method not in route.methods:
                allowed.update(route.methods)
                continue
            return RouteMatch(route=route, params=found.groupdict())
        if allowed:
            raise MethodNotAllowed(allowed)
        return None
