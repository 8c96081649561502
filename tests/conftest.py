"""Shared fixtures: the real broker's address and a unique topic prefix per test."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


@pytest.fixture
def bootstrap() -> str:
    """The broker `make kafka-up` started (integration tests fail, never skip, without it)."""
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test uses, so tests never see each other's topics or state."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fixtures3_path() -> Path:
    """Stripe's example objects, read from ../shared (never copied into the repo)."""
    path = SHARED / "stripe" / "fixtures3.json"
    assert path.is_file(), f"missing {path}: the shared/ folder must sit beside the repo"
    return path
