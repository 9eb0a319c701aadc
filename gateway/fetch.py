"""One bounded HTTP GET for the gateway's control-plane fetches: the JWKS (jwks.py) and the revocation feed
(revocation.py). Both talk to a service the gateway does not control, so both need the same guarantees: one
deadline for the whole exchange (a trickling server cannot hold a fetch open), no redirects (keys and
revocations come only from the configured URL), and a size cap enforced while streaming, not after."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Literal

import httpx

FetchFailure = Literal["error", "timeout", "too_large"]


class FetchError(Exception):
    def __init__(self, outcome: FetchFailure, message: str) -> None:
        super().__init__(message)
        self.outcome: FetchFailure = outcome
        self.message = message


async def bounded_get(
    client: httpx.AsyncClient,
    url: str,
    *,
    deadline: float,
    max_bytes: int,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
) -> tuple[bytes, httpx.Headers]:
    """The body and headers of a 200 answer within ``deadline`` seconds, or :class:`FetchError` otherwise."""
    try:
        async with asyncio.timeout(deadline):
            request = client.build_request("GET", url, params=params, headers=headers, timeout=deadline)
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                if response.status_code != 200:
                    raise FetchError("error", f"HTTP {response.status_code}")
                declared = response.headers.get("content-length", "")
                # isascii: httpx reads byte 0xb2 as "²", for which str.isdigit() is true and int() fails.
                if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                    raise FetchError("too_large", f"Content-Length {declared} over the cap")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchError("too_large", f"body over {max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks), response.headers
            finally:
                await response.aclose()
    except TimeoutError:
        raise FetchError("timeout", f"no complete answer within {deadline:g}s") from None
    except httpx.TimeoutException:
        raise FetchError("timeout", "timed out") from None
    except httpx.HTTPError as exc:
        raise FetchError("error", f"{type(exc).__name__}: {exc}") from None
    except FetchError:
        raise
    except Exception as exc:  # a closed client, an invalid URL, a transport bug: a failed fetch, not a crash
        raise FetchError("error", f"{type(exc).__name__}: {exc}") from None
