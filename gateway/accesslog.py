"""One JSON line per request on the ``gateway.access`` logger (issue 4, "Operations").

Fields: ``ts`` (UTC, RFC 3339), ``request_id``, ``method``, ``route`` (the route template, never the raw path,
which may carry identifiers or a query with secrets), ``status``, ``latency_ms``, ``user`` (the verified
``sub`` or null), ``auth`` (see :data:`AuthOutcome`), ``reason`` (the ``invalid_token`` reason, when there is
one) and ``error`` (the gateway's error code, when it refused or failed). The record has no field that could
hold a token or an ``Authorization`` value, so none can be logged by mistake.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger("gateway.access")

#: ``none``: no access decision was made (health, unmatched or unsafe path); ``public``: a public route;
#: ``valid``: a verified token; ``missing``/``invalid``: 401; ``forbidden``: 403; ``unavailable``: no keys (503).
AuthOutcome = Literal["none", "public", "valid", "missing", "invalid", "forbidden", "unavailable"]


@dataclass
class AccessRecord:
    """Filled in as the request goes through the pipeline, emitted once at the end."""

    request_id: str
    method: str
    route: str
    status: int = 0
    user: str | None = None
    auth: AuthOutcome = "none"
    reason: str | None = None
    error: str | None = None


def format_line(record: AccessRecord, latency_ms: float, now: datetime.datetime | None = None) -> str:
    fields: dict[str, object] = {
        "ts": (now or datetime.datetime.now(datetime.UTC)).isoformat(timespec="milliseconds"),
        "request_id": record.request_id,
        "method": record.method[:32],  # any token is a method to h11: bound what a client writes into the log
        "route": record.route,
        "status": record.status,
        "latency_ms": round(latency_ms, 3),
        "user": record.user,
        "auth": record.auth,
    }
    if record.reason is not None:
        fields["reason"] = record.reason
    if record.error is not None:
        fields["error"] = record.error
    return json.dumps(fields, separators=(",", ":"))


def emit(record: AccessRecord, latency_ms: float) -> None:
    if logger.isEnabledFor(logging.INFO):
        logger.info(format_line(record, latency_ms))
