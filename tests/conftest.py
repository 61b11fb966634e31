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
