"""Derived seeds are deterministic, distinct per key, and validated; the command line asks MKL for reproducible products."""

import os

import pytest

from lightning_nas.seeding import derive_generator, derive_seed


def test_derived_seeds():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert len({derive_seed(0, 0, step) for step in range(1000)}) == 1000
    assert derive_seed(0, 1) != derive_seed(1, 0)
    assert derive_generator(4, 5).initial_seed() == derive_seed(4, 5)
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1)


def test_reproducible_blas_sets_mkl_cbwr_unless_the_user_did(monkeypatch):
    from lightning_nas.seeding import MKL_REPRODUCIBLE, reproducible_blas

    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert reproducible_blas() is True and os.environ["MKL_CBWR"] == MKL_REPRODUCIBLE == "AUTO,STRICT"
    assert reproducible_blas() is False  # set already: left as it is
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    assert reproducible_blas() is False and os.environ["MKL_CBWR"] == "COMPATIBLE"


def test_the_command_line_asks_for_reproducible_blas_before_parsing(monkeypatch):
    from lightning_nas.cli import main

    monkeypatch.delenv("MKL_CBWR", raising=False)
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert os.environ["MKL_CBWR"] == "AUTO,STRICT"
