"""Who is calling: only what the gateway proves, checked before any data is read or written.

Two checks, outermost first:

1. :class:`gateway.proof.ProofMiddleware` (mounted on the whole app by :func:`proof_middleware`) refuses,
   with 401, every request whose ``X-Edge-Proof`` is missing, forged, for another method/path/query,
   expired, from the future, replayed, or sent with duplicated identity headers. ``/livez`` and
   ``/readyz`` are exempt (a load balancer calls them directly) and get no identity.
2. :class:`RequireOwner` (mounted on ``/api/{user_id}``) refuses an anonymous proof (401) and a path that
   names another user than the proven one (403). The gateway already enforces the owner rule (issue 4);
   this is defence in depth against a gateway route misconfigured as public or without the owner check.

This service knows nothing of tokens, keys, passwords or sessions.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.proof import Identity, ProofMiddleware, ProofVerifier, identity_of
from tasks_backend.config import Config
from tasks_backend.errors import Forbidden, Unauthenticated


def proof_middleware(config: Config, clock: Callable[[], float]) -> Middleware:
    verifier = ProofVerifier(config.proof_secrets, max_age=config.proof_max_age, clock=clock)
    return Middleware(ProofMiddleware, verifier=verifier, exempt_paths=("/livez", "/readyz"))


def check_owner(identity: Identity, path_user_id: str) -> str:
    """The proven user id, if it may act on ``/api/{path_user_id}/...``."""
    if identity.user_id is None:
        raise Unauthenticated("anonymous", "this resource needs a signed-in user")
    if identity.user_id != path_user_id:
        raise Forbidden("the path names another user")
    return identity.user_id


class RequireOwner:
    """ASGI middleware for the ``/api/{user_id}`` mount: the path's user must be the proven user."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # identity_of raises LookupError (a 500, failing closed) if ProofMiddleware is not mounted.
        check_owner(identity_of(Request(scope)), scope["path_params"]["user_id"])
        await self.app(scope, receive, send)
