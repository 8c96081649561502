"""Unit-test fixtures shared by the modules that talk to a scripted Stripe."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.unit.stripe_stub import StripeStub


@pytest.fixture
async def stub() -> AsyncIterator[StripeStub]:
    """A scripted local Stripe on a free port, closed after the test."""
    async with StripeStub() as s:
        yield s
