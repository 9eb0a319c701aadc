"""The README recipe "Adding a service behind the gateway", followed step by step for a second service.

1. a ``[[routes]]`` entry in the gateway TOML, above the catch-all tasks route;
2. one middleware line: ``ProofMiddleware`` with a verifier on ``EDGE_PROOF_SECRET``;
3. read the user with ``identity_of(request)``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.config import parse_config
from gateway.proof import ProofMiddleware, ProofVerifier, identity_of, parse_secrets
from gateway.routing import Router
from tests.tasks_backend.proofs import SECRET, FakeClock, proof_headers

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]

# Step 1, exactly as the README shows it.
RECIPE_ROUTE = """
[[routes]]
path = "/api/{user_id}/notes/{rest:path}"
upstream = "http://127.0.0.1:8003"
auth = "owner"
"""


def notes_service(environ: dict[str, str], clock: FakeClock) -> Starlette:
    """The whole second service: no tokens, no keys, no sessions."""

    async def whoami(request: Request) -> JSONResponse:
        identity = identity_of(request)  # step 3
        if identity.user_id != request.path_params["user_id"]:  # defence in depth; the gateway checked too
            return JSONResponse({"error": "forbidden"}, status_code=403)
        return JSONResponse({"user_id": identity.user_id, "email": identity.email})

    verifier = ProofVerifier(parse_secrets(environ["EDGE_PROOF_SECRET"]), clock=clock)
    return Starlette(
        routes=[Route("/api/{user_id}/notes/whoami", whoami)],
        middleware=[Middleware(ProofMiddleware, verifier=verifier)],  # step 2
    )


def test_step_1_the_route_goes_above_the_tasks_route():
    data = tomllib.loads((ROOT / "deploy" / "gateway.toml").read_text())
    tasks_index = next(i for i, r in enumerate(data["routes"]) if r["upstream"].endswith(":8002"))
    data["routes"].insert(tasks_index, tomllib.loads(RECIPE_ROUTE)["routes"][0])

    # deploy/gateway.toml's issuer names the revocation feed token's variable (identity's feed is not public).
    environ = {"EDGE_PROOF_SECRET": SECRET.decode(), "IDENTITY_REVOCATION_FEED_TOKEN": SECRET.decode()}
    config = parse_config(data, environ)
    router = Router(config.routes)

    notes = router.match("GET", "/api/u1/notes/whoami")
    tasks = router.match("GET", "/api/u1/tasks")
    assert notes is not None
    assert (notes.route.upstream, notes.route.auth, notes.params["user_id"]) == ("http://127.0.0.1:8003", "owner", "u1")
    assert tasks is not None
    assert tasks.route.upstream == "http://127.0.0.1:8002"


@pytest.fixture
async def notes():
    clock = FakeClock()
    app = notes_service({"EDGE_PROOF_SECRET": SECRET.decode()}, clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notes") as client:
        yield client, clock


async def test_steps_2_and_3_a_gateway_request_reaches_the_service_with_its_user(notes):
    client, clock = notes
    request = client.build_request("GET", "/api/u1/notes/whoami")
    request.headers.update(proof_headers(request, user_id="u1", email="u1@example.com", timestamp=int(clock())))

    response = await client.send(request)

    assert response.status_code == 200
    assert response.json() == {"user_id": "u1", "email": "u1@example.com"}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param(lambda r, now: {}, 401, id="no proof"),
        pytest.param(lambda r, now: {"x-user-id": "u1"}, 401, id="a client claiming a user"),
        pytest.param(
            lambda r, now: proof_headers(r, user_id="u1", timestamp=now, secret=b"not-the-gateway-secret-0123456789ab"),
            401,
            id="another secret",
        ),
        pytest.param(lambda r, now: proof_headers(r, user_id="u1", timestamp=now - 60), 401, id="expired"),
        pytest.param(lambda r, now: proof_headers(r, user_id="u2", timestamp=now), 403, id="another user's path"),
    ],
)
async def test_the_service_refuses_what_the_gateway_did_not_vouch_for(notes, headers, status):
    client, clock = notes
    request = client.build_request("GET", "/api/u1/notes/whoami")
    request.headers.update(headers(request, int(clock())))

    response = await client.send(request)

    assert response.status_code == status
    assert "u1@example.com" not in response.text
