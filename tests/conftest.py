"""Shared pytest configuration: the real-server fixtures live in tests/services.py."""

from collections.abc import Iterator

import pytest

from tests.clirun import reap_spawned

pytest_plugins = ["tests.services", "tests.slurm"]


@pytest.fixture(autouse=True)
def no_pass_outlives_its_test() -> Iterator[None]:
    yield
    reap_spawned()
