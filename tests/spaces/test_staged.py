"""StagedSpace index views and BilinearTable evaluation, extremes and persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.bilinear import LINKS, BilinearTable
from lightning_nas.spaces import Decision, SearchSpace, mobilenet_supernet
from lightning_nas.spaces.staged import StagedSpace


def small_space(blocks=(2, 3), configs=("a", "b", "c"), extra=True) -> SearchSpace:
    decisions = []
    for s, n in enumerate(blocks):
        decisions += [Decision(f"stage{s}.block{b}.config", tuple(configs), configs[0]) for b in range(n)]
        decisions.append(Decision(f"stage{s}.depth", tuple(range(1, n + 1)), n))
    if extra:
        decisions.append(Decision("head.width", (8, 16), 16))
    return SearchSpace(decisions)


def brute_value(table: BilinearTable, arch) -> float:
    total = table.constant
    for s, stage in enumerate(table.staged.stages):
        depth = arch[stage.depth_label]
        total += table.depth[s, stage.depths.index(depth)]
        for b in range(depth):
            c = stage.configs[b].index(tuple(arch[lab] for lab in stage.block_labels[b]))
            total += table.block[s, b, c]
    return total


def random_table(staged: StagedSpace, seed: int, link: str = "identity") -> BilinearTable:
    rng = np.random.default_rng(seed)
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    return BilinearTable(staged, rng.normal(), rng.normal(size=shape), rng.normal(size=(staged.num_stages, staged.max_depth_options)),
                         link=link)


def test_structure_is_inferred_from_labels():
    staged = StagedSpace.from_space(small_space())
    assert staged.num_stages == 2 and staged.max_blocks == 3 and staged.num_configs == 3
    assert staged.free_labels == ["head.width"]
    assert staged.stages[1].depths == (1, 2, 3)
    assert staged.block_exists().tolist() == [[True, True, False], [True, True, True]]
    assert staged.always_active()[:, 0].all() and not staged.always_active()[:, 1:].any()


def test_mobilenet_blocks_combine_two_decisions():
    staged = StagedSpace.from_space(mobilenet_supernet().space)
    assert staged.num_configs == 6 and staged.stages[0].block_labels[0] == ("stage0.block0.expand", "stage0.block0.kernel")
    assert staged.config_name(0, 0, 0).startswith("expand=")


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_indices_round_trip_and_table_matches_brute_force(seed):
    space = small_space()
    staged = StagedSpace.from_space(space)
    table = random_table(staged, seed)
    archs = space.sample_many(5, seed)
    for arch in archs:
        assert staged.to_arch(*staged.indices(arch), base=arch) == arch
        assert table(arch) == pytest.approx(brute_value(table, arch))
    np.testing.assert_allclose(table.predict_many(archs), [brute_value(table, a) for a in archs])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), largest=st.booleans(), link=st.sampled_from(LINKS))
def test_extreme_equals_enumeration(seed, largest, link):
    space = small_space(extra=False)
    staged = StagedSpace.from_space(space)
    table = random_table(staged, seed, link)
    values = [table(a) for a in space.enumerate()]
    value, arch = table.extreme(largest=largest)
    assert value == pytest.approx(max(values) if largest else min(values), rel=1e-12)
    assert table(arch) == pytest.approx(value, rel=1e-12)
    additive = random_table(staged, seed)
    assert table.extreme(largest=largest, additive=True)[0] == pytest.approx(additive.extreme(largest=largest)[0])


def test_one_hot_is_binas_alpha_beta():
    space = small_space()
    staged = StagedSpace.from_space(space)
    arch = space.sample(0)
    alpha, beta = staged.one_hot(arch)
    assert alpha.shape == (2, 3, 3) and beta.shape == (2, 3)
    assert alpha[0, :2].sum() == 2 and alpha[0, 2].sum() == 0 and beta.sum() == 2


def test_save_load_round_trip_and_mismatch(tmp_path):
    staged = StagedSpace.from_space(small_space())
    table = random_table(staged, 0)
    table.metadata["device"] = "cpu"
    path = table.save(tmp_path / "t.json")
    loaded = BilinearTable.load(path, staged)
    np.testing.assert_array_equal(loaded.block, table.block)
    assert loaded.metadata == {"device": "cpu"}
    other = StagedSpace.from_space(small_space(blocks=(2, 2)))
    with pytest.raises(ValueError, match="made for another space"):
        BilinearTable.load(path, other)
    data = json.loads(path.read_text())
    data["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        BilinearTable.from_dict(data, staged)


def test_bad_shapes_and_structures():
    staged = StagedSpace.from_space(small_space())
    with pytest.raises(ValueError, match=r"`block` of table .value. must have shape \(S, D, C\) = \(2, 3, 3\)"):
        BilinearTable(staged, 0.0, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        BilinearTable(staged, 0.0, np.full((2, 3, 3), np.nan))
    with pytest.raises(ValueError, match="no label of the space matches"):
        StagedSpace.from_space(SearchSpace([Decision("x", (1, 2), 1)]))
    # Blocks with different numbers of configurations: padded, and the padding is not a configuration.
    uneven = StagedSpace.from_space(SearchSpace([Decision("stage0.block0.k", (3, 5), 3), Decision("stage1.block0.k", (3, 5, 7), 3)]))
    assert uneven.num_configs == 3 and uneven.config_exists()[:, 0].tolist() == [[True, True, False], [True, True, True]]
    table = BilinearTable(uneven, 0.0, np.array([[[1.0, 2.0, np.nan]], [[0.5, 0.25, 3.0]]]))
    assert table.block[0, 0, 2] == 0.0 and table.extreme() == (1.25, {"stage0.block0.k": 3, "stage1.block0.k": 5})
    assert table.extreme(largest=True)[0] == 5.0


# -- link="log_error": the additive form is −log(1 − value) ---------------------------------------
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_log_error_link_predicts_one_minus_exp_of_the_additive_form(seed):
    space = small_space(extra=False)
    staged = StagedSpace.from_space(space)
    additive, linked = random_table(staged, seed), random_table(staged, seed, "log_error")
    archs = list(space.enumerate())
    np.testing.assert_allclose(linked.predict_many(archs), 1 - np.exp(-additive.predict_many(archs)), rtol=1e-12, atol=1e-15)  # values near 0: absolute rounding
    np.testing.assert_allclose(linked.additive_indices(*staged.indices_many(archs)), additive.predict_many(archs))


def test_link_round_trips_and_version_1_files_read_as_identity(tmp_path):
    staged = StagedSpace.from_space(small_space())
    base = random_table(staged, 1)
    linked = BilinearTable(staged, base.constant, base.block, base.depth, name="accuracy", link="log_error")
    loaded = BilinearTable.load(linked.save(tmp_path / "t.json"), staged)
    assert loaded.link == "log_error" and "link='log_error'" in repr(loaded)
    arch = staged.space.sample(3)
    assert loaded(arch) == linked(arch)
    old = base.to_dict()
    old["version"] = 1
    del old["link"]
    assert BilinearTable.from_dict(old, staged).link == "identity"
    with pytest.raises(ValueError, match="`link` must be one of"):
        BilinearTable(staged, 0.0, base.block, link="logit")
