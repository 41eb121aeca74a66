"""The namespace test bed for the test-bed tests of this folder (one bed per module, on a free slot)."""

from __future__ import annotations

import pytest

from bed_support import bed_on_a_free_slot


@pytest.fixture(scope="module")
def bed():  # type: ignore[no-untyped-def]
    with bed_on_a_free_slot() as built:
        yield built
