"""The stage structure read from a supernet's modules: any labels, shared decisions, unequal blocks.

The oracle for the solvers is brute force over ``space.enumerate()`` of random small supernets
whose units share decisions and whose blocks and stages differ in size.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import lightning_nas as ln
from lightning_nas.bilinear import BilinearTable, _structure
from lightning_nas.solvers import Limit, search_constrained
from lightning_nas.solvers.fractional import count_archs, enumerate_indices
from lightning_nas.spaces import binas_supernet, mobilenet_supernet
from lightning_nas.spaces.staged import StagedSpace


def readme_supernet() -> ln.Supernet:
    """The README's 20-line network: one width shared by seven layers, a stem kernel, an op and a depth."""
    width = ln.Choice([8, 16, 24], "width")
    return ln.Supernet(nn.Sequential(
        ln.ElasticConv2d(3, width, ln.Choice([3, 5], "stem.kernel"), stride=2), ln.ElasticBatchNorm2d(width), nn.ReLU(),
        ln.OpChoice({"conv": nn.Sequential(ln.ElasticConv2d(width, width, 3), ln.ElasticBatchNorm2d(width), nn.ReLU()),
                     "skip": nn.Identity()}, "op"),
        ln.DepthChoice([nn.Sequential(ln.ElasticConv2d(width, width, 3), nn.ReLU()) for _ in range(3)], [1, 2, 3], "depth"),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), ln.ElasticLinear(width, 10)))


class Reads(nn.Module):
    """A unit that reads the given decisions (identity forward): structure-only tests."""

    def __init__(self, choices) -> None:
        super().__init__()
        self.choices = nn.ModuleList(choices)

    def forward(self, x):
        return x


def random_supernet(data) -> ln.Supernet:
    """1-2 DepthChoice stages of 1-3 blocks with their own depth options, 0-2 always-active units,
    decisions of 2-3 values drawn from a small pool so that several units share some."""
    pool = [ln.Choice([f"v{i}" for i in range(data.draw(st.integers(2, 3)))], f"d{k}") for k in range(data.draw(st.integers(2, 4)))]

    def unit():
        picks = data.draw(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=2, unique=True))
        return Reads([pool[i] for i in picks])

    parts = []
    for s in range(data.draw(st.integers(1, 2))):
        n = data.draw(st.integers(1, 3))
        depths = data.draw(st.lists(st.integers(0, n), min_size=1, max_size=n + 1, unique=True))
        parts.append(ln.DepthChoice([unit() for _ in range(n)], depths, f"stage{s}.depth"))
    parts += [unit() for _ in range(data.draw(st.integers(0, 2)))]
    supernet = ln.Supernet(nn.Sequential(*parts))
    # The oracles walk every index array (units reading shared decisions multiply them: up to ~5e7),
    # and enumerate_indices refuses more than 2e6: keep to spaces they list in a moment.
    assume(count_archs(StagedSpace.from_supernet(supernet)) <= 100_000)
    return supernet


def random_table(staged: StagedSpace, rng: np.random.Generator, name: str) -> BilinearTable:
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    return BilinearTable(staged, float(rng.normal()), rng.uniform(0, 1, shape), rng.uniform(0, 1, (staged.num_stages, staged.max_depth_options)), name=name)


def test_readme_network_structure():
    staged = StagedSpace.from_supernet(readme_supernet())
    depth_stage, fixed = staged.stages
    assert depth_stage.depth_label == "depth" and depth_stage.depths == (1, 2, 3)
    assert depth_stage.block_labels == (("width",),) * 3 and depth_stage.paths == ("4.blocks.0", "4.blocks.1", "4.blocks.2")
    assert fixed.depth_label is None and fixed.paths == ("0", "1", "3", "7")
    assert fixed.block_labels == (("width", "stem.kernel"), ("width",), ("width", "op"), ("width",))
    assert staged.shared_labels == ["width"] and staged.free_labels == []
    assert staged.config_counts().tolist() == [[3, 3, 3, 0], [6, 3, 6, 3]]
    # The width's accuracy gain is counted once: in a unit that always runs.
    owner = staged.owner["width"]
    assert staged.always_active()[owner]
    own = staged.own_configs()
    assert (own[1, 2, :6] == [0, 1, 0, 1, 0, 1]).all() or owner == (1, 2)


@pytest.mark.parametrize("make", [lambda: binas_supernet("tiny", num_classes=10), lambda: mobilenet_supernet(num_classes=10)])
def test_label_pattern_spaces_get_the_same_structure(make):
    supernet = make()
    assert _structure(StagedSpace.from_supernet(supernet)) == _structure(StagedSpace.from_space(supernet.space))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_indices_round_trip_and_enumeration(data):
    supernet = random_supernet(data)
    staged = StagedSpace.from_supernet(supernet)
    archs = list(supernet.space.enumerate())
    for arch in archs[:50]:
        configs, depths = staged.indices(arch)
        assert staged.consistent(configs, depths)
        back = staged.to_arch(configs, depths)
        # Decisions read only by blocks that do not run may differ; everything that runs is the same.
        assert staged.indices(back)[1].tolist() == depths.tolist()
        active = staged.active(depths)
        assert (staged.indices(back)[0][active] == configs[active]).all()
    configs, depths = enumerate_indices(staged)
    distinct = {tuple(np.where(staged.active(d), c, -1).ravel()) + tuple(d) for c, d in zip(configs, depths)}
    reachable = set()
    for arch in archs:
        c, d = staged.indices(arch)
        reachable.add(tuple(np.where(staged.active(d), c, -1).ravel()) + tuple(d))
    assert distinct == reachable


@settings(max_examples=40, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**16), q=st.floats(0.05, 0.95), largest=st.booleans())
def test_milp_and_extreme_equal_brute_force(data, seed, q, largest):
    supernet = random_supernet(data)
    staged = StagedSpace.from_supernet(supernet)
    rng = np.random.default_rng(seed)
    accuracy, latency = random_table(staged, rng, "accuracy"), random_table(staged, rng, "latency")
    archs = list(supernet.space.enumerate())
    acc, lat = accuracy.predict_many(archs), latency.predict_many(archs)
    # extreme(): the exact smallest / largest value over the space.
    value, arch = latency.extreme(largest=largest)
    assert value == pytest.approx(lat.max() if largest else lat.min(), abs=1e-9)
    assert latency.predict(arch) == pytest.approx(value, abs=1e-9)
    # The MILP under a latency limit: the brute-force optimum.
    limit = float(np.quantile(lat, q))
    best = search_constrained(accuracy, Limit(latency, upper=limit))
    assert best.status == "optimal" and best.feasible
    assert best.objective == pytest.approx(acc[lat <= limit + 1e-7].max(), abs=1e-6)
    assert accuracy.predict(best.arch) == pytest.approx(best.objective, abs=1e-9)
    assert latency.predict(best.arch) <= limit + 1e-7
    # And with a lower bound too (both bounds active).
    ordered = np.sort(lat)
    lower, upper = float(ordered[int(q / 2 * (len(lat) - 1))]), float(ordered[int(q * (len(lat) - 1))])
    both = search_constrained(accuracy, Limit(latency, upper=upper, lower=lower))
    assert both.objective == pytest.approx(acc[(lat <= upper + 1e-7) & (lat >= lower - 1e-7)].max(), abs=1e-6)


def test_shared_decisions_stay_consistent_in_to_arch():
    staged = StagedSpace.from_supernet(readme_supernet())
    configs, depths = staged.indices(staged.space.largest())
    configs[1, 1] = 0  # the BN unit now says width 8, the others 24
    assert not staged.consistent(configs, depths)
    with pytest.raises(ValueError, match="shared decision 'width'"):
        staged.to_arch(configs, depths)


def test_heuristic_solvers_refuse_shared_decisions():
    staged = StagedSpace.from_supernet(readme_supernet())
    rng = np.random.default_rng(0)
    accuracy, latency = random_table(staged, rng, "accuracy"), random_table(staged, rng, "latency")
    for method in ("bcfw", "evolution"):
        with pytest.raises(ValueError, match="method='milp'"):
            search_constrained(accuracy, Limit(latency, upper=100.0), method=method)


def test_unsupported_structures_are_clear_errors():
    inner = ln.DepthChoice([nn.Identity(), nn.Identity()], [1, 2], "inner")
    nested = ln.Supernet(nn.Sequential(ln.DepthChoice([nn.Sequential(nn.Identity(), inner)], [1], "outer")))
    with pytest.raises(ValueError, match="nested depth decisions"):
        StagedSpace.from_supernet(nested)
    in_op = ln.Supernet(nn.Sequential(ln.OpChoice([ln.DepthChoice([nn.Identity()] * 2, [1, 2], "d"), nn.Identity()], "op")))
    with pytest.raises(ValueError, match=r"OpChoice '0' holds the DepthChoice '0\.[\w.]+' inside one of its candidates"):
        StagedSpace.from_supernet(in_op)
    # A module with too many joint values is split into its children; a single layer cannot be.
    split = StagedSpace.from_supernet(ln.Supernet(Reads([ln.Choice(list(range(20)), f"x{i}") for i in range(3)])), max_unit_configs=100)
    assert split.stages[0].block_labels == (("x0",), ("x1",), ("x2",))
    big = ln.Supernet(nn.Sequential(ln.ElasticLinear(ln.Choice(list(range(1, 21)), "in"), ln.Choice(list(range(1, 21)), "out"))))
    with pytest.raises(ValueError, match="400 joint values"):
        StagedSpace.from_supernet(big, max_unit_configs=100)
    assert StagedSpace.from_supernet(big).num_configs == 400
    with pytest.raises(ValueError, match="must be a lightning_nas.Supernet"):
        StagedSpace.from_supernet(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="expected a Supernet"):
        StagedSpace.of(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no decisions"):
        StagedSpace.from_supernet(ln.Supernet(nn.Linear(2, 2)))


class ReadsAndHolds(nn.Module):
    """Reads a decision in its own forward and holds a DepthChoice: the decision cannot be timed alone."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = ln.Choice([1, 2], "scale")
        self.body = ln.DepthChoice([nn.Linear(4, 4), nn.Linear(4, 4)], [1, 2], "depth")

    def forward(self, x):
        return self.body(x) * self.scale.value


def test_a_decision_read_next_to_a_depth_choice_is_refused_by_the_profiler():
    from lightning_nas.profiling import build_params_table

    supernet = ln.Supernet(ReadsAndHolds())
    staged = StagedSpace.from_supernet(supernet)
    assert staged.stages[-1].paths == ("scale",)
    with pytest.raises(ValueError, match="'scale' is read directly by the module '<root>'"):
        build_params_table(supernet)


def test_params_and_flops_tables_are_exact_with_shared_decisions():
    from lightning_nas.profiling import build_flops_table, build_params_table
    from lightning_nas.profiling.tables import _flops

    supernet = readme_supernet()
    params, flops = build_params_table(supernet), build_flops_table(supernet, (3, 16, 16))
    for arch in supernet.space.sample_many(12, 0):
        subnet = supernet.export(arch)
        assert params.predict(arch) == pytest.approx(sum(p.numel() for p in subnet.parameters()))
        assert flops.predict(arch) == pytest.approx(_flops(subnet, (1, 3, 16, 16)) / 1e6, abs=1e-9)


def test_unit_shapes_follow_the_decisions_they_read():
    from lightning_nas.profiling import block_shapes

    supernet = readme_supernet()
    shapes = block_shapes(supernet, (1, 3, 16, 16))
    assert [s[0] for s in shapes[1][1]] == [(1, 8, 8, 8), (1, 16, 8, 8), (1, 24, 8, 8)]  # the BN unit, per width
    assert shapes[0][0] == [((1, w, 8, 8), (1, w, 8, 8)) for w in (8, 16, 24)]
    torch.manual_seed(0)


@pytest.mark.parametrize("options", [{"method": "one_pass", "passes": 2}, {"method": "paper", "passes": 1},
                                     {"method": "one_pass", "passes": 3, "fit": "log_error"}])
def test_accuracy_gains_of_a_shared_decision_are_counted_once(options):
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_nas.estimators import estimate_contributions
    from lightning_nas.estimators.contributions import paper_protocol_conditionals

    torch.manual_seed(0)
    supernet = readme_supernet()
    staged = StagedSpace.of(supernet)
    g = torch.Generator().manual_seed(0)
    held_out = DataLoader(TensorDataset(torch.randn(48, 3, 16, 16, generator=g), torch.randint(10, (48,), generator=g)), batch_size=16)
    table = estimate_contributions(supernet, held_out, seed=0, **options)
    own = staged.own_configs()
    owner = staged.owner["width"]
    for s, b in zip(*np.nonzero(staged.block_exists())):
        count = len(staged.stages[s].configs[b])
        # Every config carries its owned config's gain: blocks that read the width without owning it
        # do not depend on it; the owner does.
        np.testing.assert_array_equal(table.block[s, b, :count], table.block[s, b, own[s, b, :count]])
        if (s, b) != owner and "width" in staged.stages[s].block_labels[b]:
            assert len(set(own[s, b, :count].tolist())) == count // 3
    if options["method"] == "paper":
        # One conditional per owned value: the width's three in its owner only; a block that owns
        # nothing has one (its presence), the stem 2 kernels, the op 2 candidates.
        assert len(paper_protocol_conditionals(staged)) == 1 + 3 + (3 + 1 + 1) + (2 + 1 + 2 + 1)


@pytest.mark.parametrize("seed", range(4))
def test_fractional_program_with_shared_decisions_equals_brute_force(seed):
    from lightning_nas.solvers.fractional import solve_fractional

    staged = StagedSpace.from_supernet(readme_supernet())
    rng = np.random.default_rng(seed)
    numerator, denominator, latency = (random_table(staged, rng, n) for n in ("penalty", "flops", "latency"))
    denominator = BilinearTable(staged, 5.0, denominator.block, denominator.depth, name="flops")
    limit = float(np.median(latency.predict_many(list(staged.space.enumerate()))))
    exact = solve_fractional(numerator, denominator, Limit(latency, upper=limit), constant=1.0)
    brute = solve_fractional(numerator, denominator, Limit(latency, upper=limit), constant=1.0, method="brute_force")
    assert exact.objective == pytest.approx(brute.objective, rel=1e-7)
    charnes = solve_fractional(numerator, denominator, Limit(latency, upper=limit), constant=1.0, method="charnes_cooper")
    assert charnes.objective == pytest.approx(brute.objective, rel=1e-6)


def test_tables_saved_for_the_label_structure_load_for_the_supernet(tmp_path):
    supernet = binas_supernet("tiny", num_classes=10)
    by_labels = StagedSpace.from_space(supernet.space)
    rng = np.random.default_rng(0)
    path = random_table(by_labels, rng, "latency").save(tmp_path / "latency.json")
    loaded = BilinearTable.load(path, StagedSpace.of(supernet))
    arch = supernet.space.sample(0)
    assert loaded.predict(arch) == pytest.approx(BilinearTable.load(path, by_labels).predict(arch))


def test_depth_decisions_shared_or_read_elsewhere_are_clear_errors():
    twice = ln.Supernet(nn.Sequential(ln.DepthChoice([nn.Identity()] * 2, [1, 2], "depth"), ln.DepthChoice([nn.Identity()] * 2, [1, 2], "depth")))
    with pytest.raises(ValueError, match="shared by several DepthChoices"):
        StagedSpace.from_supernet(twice)
    read = ln.Supernet(nn.Sequential(ln.DepthChoice([nn.Identity()] * 2, [1, 2], "depth"), Reads([ln.Choice([1, 2], "depth", default=2)])))
    with pytest.raises(ValueError, match="is the depth of stage 0 and is also read"):
        StagedSpace.from_supernet(read)


@pytest.mark.parametrize("method", ["bcfw", "evolution"])
def test_heuristics_pick_only_configurations_a_block_has(method):
    # Blocks with 2, 3 and 4 configurations: padding entries must never be chosen (their table value is 0).
    pool = {k: ln.Choice(list(range(k)), f"c{k}") for k in (2, 3, 4)}
    supernet = ln.Supernet(nn.Sequential(ln.DepthChoice([Reads([pool[2]]), Reads([pool[3]]), Reads([pool[4]])], [1, 2, 3], "depth")))
    staged = StagedSpace.from_supernet(supernet)
    rng = np.random.default_rng(0)
    accuracy, latency = random_table(staged, rng, "accuracy"), random_table(staged, rng, "latency")
    accuracy = BilinearTable(staged, 0.0, -1.0 - accuracy.block, accuracy.depth, name="accuracy")  # padding (0) would win
    limit = float(np.median(latency.predict_many(list(supernet.space.enumerate()))))
    result = search_constrained(accuracy, Limit(latency, upper=limit), method=method, seed=0)
    exact = search_constrained(accuracy, Limit(latency, upper=limit))
    assert supernet.space.contains(result.arch)
    configs, _ = staged.indices(result.arch)
    assert (configs[staged.block_exists()] < staged.config_counts()[staged.block_exists()]).all()
    assert result.objective <= exact.objective + 1e-9


# -- existing transformers decorated by mutate: ElasticLayers stacks -----------------------------------


@functools.cache
def decorated_vit(mode: str, layers: int, min_depth: int) -> ln.Supernet:
    """A 16-wide timm ViT of ``layers`` blocks (2 heads, MLP 32/64: 4 configurations per block) whose
    depth is a prefix (``min_depth``..``layers``) or an on/off decision per block."""
    import timm

    from lightning_nas.nn import mutate
    from lightning_nas.nn.transformer_rules import autoformer

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=4, in_chans=1, embed_dim=16,
                            depth=layers, num_heads=2, num_classes=3)
    rule = autoformer(head_ratios=(0.5, 1.0), mlp_ratios=(0.5, 1.0), depth=mode, min_depth=min_depth)
    return ln.Supernet(mutate(vit, rules=[rule]))


@functools.cache
def decorated_params_table(mode: str, layers: int, min_depth: int) -> BilinearTable:
    from lightning_nas.profiling import build_params_table

    return build_params_table(decorated_vit(mode, layers, min_depth))


def test_elastic_layers_become_stages():
    prefix = StagedSpace.of(decorated_vit("prefix", 3, 1))
    (stage,) = prefix.stages
    assert stage.depth_label == "blocks.depth" and stage.depths == (1, 2, 3) and stage.paths == ("blocks.0", "blocks.1", "blocks.2")
    assert stage.block_labels[1] == ("blocks.1.attn.num_heads", "blocks.1.mlp.hidden_features") and len(stage.configs[1]) == 4
    skip = StagedSpace.of(decorated_vit("skip", 2, 1))
    assert [(st.depth_label, st.depths, st.paths) for st in skip.stages] == [("blocks.0.keep", (False, True), ("blocks.0",)),
                                                                            ("blocks.1.keep", (False, True), ("blocks.1",))]
    # An arch goes through the indices and back with its bools (True is not the candidate 1).
    arch = {**skip.space.largest(), "blocks.0.keep": False}
    back = skip.to_arch(*skip.indices(arch))
    assert back == arch and back["blocks.0.keep"] is False and back["blocks.1.keep"] is True
    # Without a depth decision every layer is an always-active unit of its own.
    (fixed,) = StagedSpace.of(decorated_vit(None, 2, 1)).stages
    assert fixed.depth_label is None and fixed.paths == ("blocks.0", "blocks.1")


@settings(max_examples=30, deadline=None)
@given(mode=st.sampled_from(["prefix", "skip"]), layers=st.integers(1, 3), min_depth=st.integers(0, 2), seed=st.integers(0, 2**16),
       q=st.floats(0.05, 0.95))
def test_milp_equals_brute_force_on_decorated_transformers(mode, layers, min_depth, seed, q):
    """Random accuracy / latency tables and the real (exact) parameter table of decorated ViTs:
    the MILP's optimum under either limit is the brute-force optimum over every arch."""
    supernet = decorated_vit(mode, layers, min(min_depth, layers - 1))
    staged = StagedSpace.of(supernet)
    rng = np.random.default_rng(seed)
    accuracy, latency = random_table(staged, rng, "accuracy"), random_table(staged, rng, "latency")
    params = decorated_params_table(mode, layers, min(min_depth, layers - 1))
    archs = list(supernet.space.enumerate())
    acc = accuracy.predict_many(archs)
    for table in (latency, params):
        cost = table.predict_many(archs)
        limit = float(np.quantile(cost, q))
        best = search_constrained(accuracy, Limit(table, upper=limit))
        assert best.status == "optimal" and table.predict(best.arch) <= limit + 1e-6
        assert best.objective == pytest.approx(acc[cost <= limit + 1e-7].max(), abs=1e-6)
        assert accuracy.predict(best.arch) == pytest.approx(best.objective, abs=1e-9)


def test_params_table_of_a_decorated_transformer_is_exact():
    """A skipped layer costs nothing: the additive table equals the exported model's count."""
    supernet = decorated_vit("skip", 3, 1)
    params = decorated_params_table("skip", 3, 1)
    for arch in supernet.space.sample_many(8, 0) + [supernet.space.smallest(), supernet.space.largest()]:
        assert params.predict(arch) == sum(p.numel() for p in supernet.export(arch).parameters())


def test_unsupported_decorated_structures_name_the_module():
    import copy

    stack = copy.deepcopy(decorated_vit("prefix", 2, 1).module.blocks)
    nested = ln.Supernet(nn.Sequential(ln.DepthChoice([nn.Sequential(nn.Identity(), stack)], [0, 1], "outer")))
    with pytest.raises(ValueError, match=r"inside its block '0\.blocks\.0'; nested depth decisions are not supported"):
        StagedSpace.from_supernet(nested)
    inner = ln.Supernet(nn.Sequential(ln.OpChoice([copy.deepcopy(stack), nn.Identity()], "op")))
    with pytest.raises(ValueError, match=r"OpChoice '0' holds the ElasticLayers '0\.[\w.]+' inside one of its candidates"):
        StagedSpace.from_supernet(inner)
    with pytest.raises(ValueError, match=r"block 'blocks\.0' of the ElasticLayers at 'blocks' reads decisions .* 4 joint values, more than max_unit_configs=3"):
        StagedSpace.from_supernet(decorated_vit("prefix", 2, 1), max_unit_configs=3)
