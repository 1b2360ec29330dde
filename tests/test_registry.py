"""The generic registry: register, look up, list, overwrite warning, unknown-name error."""

import pytest

from lightning_nas.registry import Registry


def test_registry():
    reg = Registry("space")

    @reg.register()
    def tiny(width=1):
        return ("tiny", width)

    reg.register("big")(lambda: "big")
    assert reg.create("tiny", width=3) == ("tiny", 3)
    assert reg.list() == ["big", "tiny"] and reg.list("t*") == ["tiny"]
    assert "tiny" in reg
    with pytest.raises(ValueError, match=r"unknown space 'huge'; known: \['big', 'tiny'\]"):
        reg.get("huge")
    with pytest.warns(UserWarning, match="registered again"):
        reg.register("big")(lambda: "bigger")
