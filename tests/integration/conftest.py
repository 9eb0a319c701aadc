"""Real processes on loopback: the three services started by the same launcher `make run` uses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scripts.devstack import Stack, free_port


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """identity, tasks backend and gateway on free loopback ports, each on its own SQLite file."""
    ports = {"gateway": free_port(), "identity": free_port(), "tasks": free_port()}
    with Stack(tmp_path_factory.mktemp("stack"), ports=ports) as running:
        yield running
