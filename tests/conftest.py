"""Shared fixtures: paths to ../shared data (skipped cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REALDATA = SHARED / "realdata"
PEERDATA = SHARED / "peerdata" / "opencv_stitching"


@pytest.fixture
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not beside the repository")
    return REALDATA


@pytest.fixture
def peerdata() -> Path:
    if not PEERDATA.is_dir():
        pytest.skip("../shared/peerdata is not beside the repository")
    return PEERDATA
