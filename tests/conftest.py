"""Shared fixtures: AWS test credentials, a moto server per session, scratch directories."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness import AWS_ENV, FakeAPI, MotoServer


@pytest.fixture(autouse=True, scope="session")
def _aws_test_env() -> Iterator[None]:
    # never reach real AWS: fake credentials, no instance metadata
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.close()


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The session's moto server, emptied for this test."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def fake_api() -> Iterator[FakeAPI]:
    api = FakeAPI()
    yield api
    api.close()
