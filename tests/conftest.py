"""Shared test fixtures: the raw CP2K excerpt and the shipped dataset."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist (see .ci/run) each worker keeps Numba's on-disk cache in a folder of its own, set
# before any test module imports Numba: two workers compiling two signatures of one cached function at
# once into one folder can leave its index naming the other's code (numba/numba#10128).
if "PYTEST_XDIST_WORKER" in os.environ:
    _cache = Path(os.environ.get("NUMBA_CACHE_DIR") or ROOT / ".pytest_cache" / "numba")
    os.environ["NUMBA_CACHE_DIR"] = str(_cache / os.environ["PYTEST_XDIST_WORKER"])

EXCERPT_DIR = ROOT / "tests" / "fixtures" / "water32_excerpt"
SHIPPED_DATASET = ROOT / "data" / "water32_300K.npz"


@pytest.fixture(scope="session")
def excerpt_dir() -> Path:
    """Read-only raw CP2K files: the first 5 frames of the water32_300K run, bytes unaltered."""
    return EXCERPT_DIR


@pytest.fixture
def excerpt_copy(tmp_path) -> Path:
    """A private copy of the excerpt that a test may mutate."""
    target = tmp_path / "run"
    shutil.copytree(EXCERPT_DIR, target)
    return target


@pytest.fixture(scope="session")
def shipped_dataset_path() -> Path:
    return SHIPPED_DATASET


@pytest.fixture(scope="session")
def shipped_dataset():
    """data/water32_300K.npz, loaded once per session (treat as read-only)."""
    from discover.dataset import Dataset

    return Dataset.load(SHIPPED_DATASET)
