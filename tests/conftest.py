"""Shared fixtures: paths to the bundled demo data and the shared real datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COOKING_TRAIN = ROOT / "data" / "cooking" / "cooking.train"
COOKING_VALID = ROOT / "data" / "cooking" / "cooking.valid"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def cooking_paths() -> tuple[Path, Path]:
    return COOKING_TRAIN, COOKING_VALID


@pytest.fixture
def hyt_paths() -> tuple[Path, Path]:
    folder = SHARED_DATA / "howyoutagtweets"
    if not (folder / "train.csv").is_file():
        pytest.skip("../shared/data/howyoutagtweets is not beside the repository")
    return folder / "train.csv", folder / "valid.csv"


# Real servers for the daemon's integration tests (../shared/docs/INFRA.md): a Tansu broker and
# a Redis server, each a child process on a free loopback port, one per test session.
@pytest.fixture(scope="session")
def broker():
    from daemon.embedded import start_tansu

    server = start_tansu()
    yield f"127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from daemon.embedded import start_redis

    server = start_redis(workdir=str(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"
