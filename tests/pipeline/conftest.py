"""Fixtures of the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.commit.ledger import Ledger
from tests.pipeline.ledgers import make_ledger


@pytest.fixture(params=["local", "s3"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    """An empty ledger on a local folder, then on S3 (moto)."""
    return make_ledger(request.param, tmp_path, request)
