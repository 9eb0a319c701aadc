"""The fleet as real processes on loopback, on a PostgreSQL cluster of its own (never the machine's shared one:
the test restarts it)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.devstack import free_port
from scripts.fleet import Fleet, FleetPorts, PrivatePostgres, ensure_haproxy

#: How often the fleet test's gateways refresh their JWKS: a refresh is due after ``jwks_ttl`` but never comes
#: sooner than ``jwks_refetch_cooldown`` after the last one (deploy/gateway.production.toml: 300 and 10 s). Short
#: here, so a key rotation completes within the test (tests/fleet/test_fleet.py, PUBLISH_DELAY).
JWKS_REFRESH = {"jwks_ttl": 2.0, "jwks_refetch_cooldown": 1.0}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    haproxy = ensure_haproxy(echo=None)
    # Under /tmp, not tmp_path: the cluster runs as the postgres user, who cannot enter pytest's 0700 directories.
    cluster = Path(tempfile.mkdtemp(prefix="edge-fleet-pg-"))
    try:
        postgres = PrivatePostgres(cluster, free_port())
        env = {
            **os.environ,
            # Every test user signs up from one address; the default 10 per minute would refuse the later ones.
            "IDENTITY_RATE_LIMIT_PER_ADDRESS": "1000",
        }
        with Fleet(
            tmp_path / "fleet",
            database_url=postgres.url.rsplit("/", 1)[0] + "/edge_fleet",
            ports=FleetPorts.free(),
            postgres=postgres,
            env=env,
            gateway_overrides=JWKS_REFRESH,
            haproxy=haproxy,
        ) as running:
            yield running
    finally:
        shutil.rmtree(cluster, ignore_errors=True)
