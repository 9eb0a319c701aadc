"""The access-log line (gateway/accesslog.py) is assembled by hand for speed; it must be exactly the JSON that
``json.dumps`` writes for the same fields, whatever a client or a token puts in them."""

from __future__ import annotations

import datetime
import json
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import accesslog
from gateway.accesslog import AccessRecord, emit, format_line

NOW = datetime.datetime(2026, 11, 26, 15, 4, 5, 678901, tzinfo=datetime.UTC)


def reference(record: AccessRecord, latency_ms: float, now: datetime.datetime) -> str:
    fields: dict[str, object] = {
        "ts": now.isoformat(timespec="milliseconds"),
        "request_id": record.request_id,
        "method": record.method[:32],
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


@given(
    st.text(max_size=40),
    st.text(max_size=40),
    st.text(max_size=60),
    st.integers(0, 599),
    st.floats(0, 1e7, allow_nan=False),
    st.none() | st.text(max_size=40),
    st.sampled_from(["none", "public", "valid", "missing", "invalid", "forbidden", "unavailable"]),
    st.none() | st.text(max_size=20),
    st.none() | st.text(max_size=20),
)
def test_the_line_is_what_json_dumps_writes(request_id, method, route, status, latency, user, auth, reason, error):
    record = AccessRecord(request_id, method, route, status, user, auth, reason, error)
    assert format_line(record, latency, NOW) == reference(record, latency, NOW)


@pytest.mark.parametrize(
    "user",
    [
        pytest.param('"quoted" \\ back', id="quotes and backslash"),
        pytest.param("line\nbreak\r\t\x00", id="controls"),
        pytest.param("\u00e9\u5c71\U0001f600\ud800", id="non-ASCII and a lone surrogate"),
    ],
)
def test_hostile_values_stay_one_json_line(user):
    record = AccessRecord("r" * 32, "GET", "/api/{user_id}/{rest:path}", 200, user, "valid")
    line = format_line(record, 1.5)
    assert "\n" not in line
    assert json.loads(line)["user"] == user


def test_the_timestamp_is_utc_milliseconds_and_current():
    line = json.loads(format_line(AccessRecord("r", "GET", "x"), 0.0))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["ts"])
    stamp = datetime.datetime.fromisoformat(line["ts"])
    assert abs((datetime.datetime.now(datetime.UTC) - stamp).total_seconds()) < 2


def test_emit_goes_through_the_loggers_handlers_and_only_when_enabled(caplog):
    record = AccessRecord("r" * 32, "GET", "/x", 200)
    with caplog.at_level(logging.WARNING, logger="gateway.access"):
        emit(record, 1.0)
    assert not caplog.records
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        emit(record, 1.0)
    (logged,) = caplog.records
    assert logged.name == "gateway.access" and logged.levelno == logging.INFO
    assert json.loads(logged.getMessage())["request_id"] == "r" * 32
    assert accesslog.logger.name == "gateway.access"
