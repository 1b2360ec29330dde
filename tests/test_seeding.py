"""Derived seeds are deterministic, distinct per key, and validated."""

import pytest

from lightning_nas.seeding import derive_generator, derive_seed


def test_derived_seeds():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert len({derive_seed(0, 0, step) for step in range(1000)}) == 1000
    assert derive_seed(0, 1) != derive_seed(1, 0)
    assert derive_generator(4, 5).initial_seed() == derive_seed(4, 5)
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1)
