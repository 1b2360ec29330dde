"""Solver backends: discovery and the error for an unavailable solver."""

from __future__ import annotations

import pytest

from lightning_nas.solvers import available_solvers, get_solver


def test_highs_is_installed_with_the_package():
    assert "appsi_highs" in available_solvers()
    assert get_solver("appsi_highs").available()


def test_unavailable_solver_lists_the_installed_ones():
    with pytest.raises(ValueError, match=r"solver 'no_such_solver' is not available here; installed: \[.*'appsi_highs'"):
        get_solver("no_such_solver")
    with pytest.raises(ValueError, match="must be a Pyomo solver name"):
        get_solver("")
