"""Sign requests the way the gateway does (``gateway.proof.sign``), for driving the backend in-process."""

from __future__ import annotations

import uuid

import httpx

from gateway import proof

SECRET = b"tasks-backend-test-secret-0123456789abcdef"
START = 1_760_000_000.0


class FakeClock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def proof_headers(
    request: httpx.Request,
    *,
    user_id: str | None,
    timestamp: int,
    email: str | None = None,
    secret: bytes = SECRET,
    request_id: str | None = None,
) -> dict[str, str]:
    """The headers the gateway adds to ``request``: identity, request id and the proof over all of them."""
    request_id = request_id or uuid.uuid4().hex
    target = request.url.raw_path.decode("ascii")  # path and query, percent-encoded, as forwarded
    headers = {
        proof.PROOF_HEADER: proof.sign(
            secret,
            method=request.method,
            target=target,
            user_id=user_id,
            email=email,
            request_id=request_id,
            timestamp=timestamp,
        ),
        proof.REQUEST_ID_HEADER: request_id,
    }
    if user_id is not None:
        headers[proof.USER_ID_HEADER] = user_id
    if email is not None:
        headers[proof.USER_EMAIL_HEADER] = email
    return headers


class GatewayClient:
    """An httpx client whose every request arrives as if forwarded by the gateway for ``user_id``."""

    def __init__(self, app: object, clock: FakeClock, user_id: str | None = "alice") -> None:
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tasks.test")  # type: ignore[arg-type]
        self.clock = clock
        self.user_id = user_id

    async def request(self, method: str, url: str, *, as_user: str | None = "", **kwargs: object) -> httpx.Response:
        request = self.http.build_request(method, url, **kwargs)  # type: ignore[arg-type]
        user_id = self.user_id if as_user == "" else as_user
        request.headers.update(proof_headers(request, user_id=user_id, timestamp=int(self.clock())))
        return await self.http.send(request)

    async def get(self, url: str, **kwargs: object) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: object) -> httpx.Response:
        return await self.request("POST", url, **kwargs)

    async def put(self, url: str, **kwargs: object) -> httpx.Response:
        return await self.request("PUT", url, **kwargs)

    async def patch(self, url: str, **kwargs: object) -> httpx.Response:
        return await self.request("PATCH", url, **kwargs)

    async def delete(self, url: str, **kwargs: object) -> httpx.Response:
        return await self.request("DELETE", url, **kwargs)

    async def aclose(self) -> None:
        await self.http.aclose()
