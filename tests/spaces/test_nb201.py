import pytest

from lightning_nas.spaces.nb201 import (
    NB201_LABELS,
    nb201_all_archs,
    nb201_from_op_code,
    nb201_from_string,
    nb201_op_code,
    nb201_search_space,
    nb201_string,
)


def test_round_trip_all_cells():
    archs = list(nb201_all_archs())
    assert len(archs) == 15_625 == nb201_search_space().size
    strings = {nb201_string(a) for a in archs}
    assert len(strings) == len(archs)
    for arch in archs:
        assert nb201_from_string(nb201_string(arch)) == arch
        assert nb201_from_op_code(nb201_op_code(arch)) == arch
        assert nb201_search_space().contains(arch)


def test_matches_benchmark_convention():
    text = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    arch = nb201_from_string(text)
    assert nb201_op_code(arch) == "334131"
    assert arch["edge_2_1"] == "avg_pool_3x3" and arch["edge_3_2"] == "skip_connect"
    assert nb201_string(arch) == text
    assert nb201_from_op_code(421211) == nb201_from_op_code("421211")


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="3 '\\+'-separated"):
        nb201_from_string("|nor_conv_3x3~0|")
    with pytest.raises(ValueError, match="unknown NB201 operations"):
        nb201_from_string("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    with pytest.raises(ValueError, match="i < 2"):
        nb201_from_string("|none~0|+|none~0|none~2|+|none~0|none~1|none~2|")
    with pytest.raises(ValueError, match="missing"):
        nb201_string({NB201_LABELS[0]: "none"})
    with pytest.raises(ValueError, match="6 digits"):
        nb201_from_op_code("12345")
