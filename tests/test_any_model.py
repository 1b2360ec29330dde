"""Any model, end to end: hand-written supernets with free labels through the whole pipeline.

Train with per-example sampling, estimate the accuracy table, profile latency, FLOPs and params,
solve under a latency limit, sweep a Pareto front, export; MathNAS's block performances, the
fractional solve and the dynamic network on a model without shared decisions.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_nas as ln
from lightning_nas.bilinear import BilinearTable
from lightning_nas.callbacks import ContributionEstimation, LatencyProfiler, UniformSampling
from lightning_nas.profiling import build_flops_table, build_params_table
from lightning_nas.solvers import Limit, pareto_sweep, search_constrained
from lightning_nas.spaces.staged import StagedSpace


class ResidualMLP(nn.Module):
    """A residual MLP block whose hidden width is its own decision."""

    def __init__(self, width: int, hidden: ln.Choice) -> None:
        super().__init__()
        self.up, self.act, self.down = ln.ElasticLinear(width, hidden), nn.ReLU(), ln.ElasticLinear(hidden, width)

    def forward(self, x):
        return x + self.down(self.act(self.up(x)))


def mlp_supernet(shared: bool) -> ln.Supernet:
    """Input projection, a DepthChoice of residual blocks, a head with a searchable activation.

    ``shared``: one hidden-width decision read by every block and a projection width read by two
    layers (decisions shared by several units); otherwise each block has its own hidden width,
    with 2 or 3 candidates, and the projection is fixed.
    """
    common = ln.Choice([8, 16, 32], "hidden")
    proj = ln.Choice([16, 32], "proj") if shared else 32  # shared: read by two layers
    blocks = [ResidualMLP(32, common if shared else ln.Choice([8, 16, 32][: 2 + (b % 2)], f"hidden{b}")) for b in range(3)]
    return ln.Supernet(nn.Sequential(
        nn.Flatten(), ln.ElasticLinear(48, proj), nn.ReLU(), ln.ElasticLinear(proj, 32),
        ln.DepthChoice(blocks, [1, 2, 3], "blocks"),
        # One module: the activation and the layer after it form one unit.
        nn.Sequential(ln.OpChoice({"relu": nn.ReLU(), "tanh": nn.Tanh()}, "head_act"), ln.ElasticLinear(32, 4))))


class Classifier(pl.LightningModule):
    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def data(n: int, seed: int) -> DataLoader:
    prototypes = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(4, (n,), generator=g)
    return DataLoader(TensorDataset(prototypes[y] + 0.7 * torch.randn(n, 3, 4, 4, generator=g), y), batch_size=32)


def run_pipeline(supernet: ln.Supernet, tmp_path, fit: str):
    estimate = ContributionEstimation(data(96, 2), passes=4, fit=fit, **({"allocation": "adaptive"} if fit == "log_error" else {}))
    profile = LatencyProfiler(tmp_path / "latency.json", input_size=(3, 4, 4), repeats=5, warmup=1, calibration_archs=3)
    pl.Trainer(max_epochs=2, callbacks=[UniformSampling(seed=0, per_sample=True), estimate, profile], logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=tmp_path).fit(Classifier(supernet), data(128, 0))
    return estimate.accuracy_model, profile.latency_table


@pytest.mark.parametrize(("make", "fit"), [(lambda: mlp_supernet(shared=True), "log_error"), (lambda: mlp_supernet(shared=False), "means")])
def test_hand_written_mlp_runs_the_whole_pipeline(make, fit, tmp_path):
    torch.manual_seed(0)
    supernet = make()
    staged = StagedSpace.of(supernet)
    assert staged.stages[0].depth_label == "blocks" and [len(c) for c in staged.stages[0].configs][:3] in ([3, 3, 3], [2, 3, 2])
    accuracy, latency = run_pipeline(supernet, tmp_path, fit)
    assert accuracy.staged.stages == staged.stages and latency.staged.stages == staged.stages
    assert np.isfinite(accuracy.block).all() and latency.constant == latency.constant
    # Exact solve under a latency limit: the brute-force optimum over the whole space.
    archs = list(supernet.space.enumerate())
    acc, lat = accuracy.predict_many(archs), latency.predict_many(archs)
    limit = float(np.median(lat))
    best = search_constrained(accuracy, Limit(latency, upper=limit))
    assert best.status == "optimal" and best.resources["latency"] <= limit + 1e-7
    assert accuracy.predict(best.arch) == pytest.approx(acc[lat <= limit + 1e-7].max(), abs=1e-9)
    front = pareto_sweep(accuracy, latency, targets=list(np.quantile(lat, [0.2, 0.5, 0.9])))
    predicted = [accuracy.predict(r.arch) for r in front]
    assert predicted == sorted(predicted)
    # FLOPs and params tables are exact for every arch, shared decisions included.
    params, flops = build_params_table(supernet), build_flops_table(supernet, (3, 4, 4))
    for arch in archs[:: max(1, len(archs) // 10)]:
        subnet = supernet.export(arch)
        assert params.predict(arch) == pytest.approx(sum(p.numel() for p in subnet.parameters()))
    # The exported pick computes what the supernet computes with it active.
    subnet = supernet.export(best.arch).eval()
    supernet.eval()
    x = next(iter(data(8, 3)))[0]
    with supernet.activated(best.arch), torch.no_grad():
        torch.testing.assert_close(subnet(x), supernet(x))
    assert flops.predict(best.arch) > 0


def test_mathnas_fractional_and_dynamic_network_on_a_hand_written_mlp(tmp_path):
    from lightning_nas.dynamic import DynamicNetwork
    from lightning_nas.estimators.block_performance import estimate_block_performance, supernet_evaluator
    from lightning_nas.solvers.fractional import solve_fractional

    torch.manual_seed(0)
    supernet = mlp_supernet(shared=False)
    _, latency = run_pipeline(supernet, tmp_path, "means")
    staged = StagedSpace.of(supernet)
    flops = build_flops_table(supernet, (3, 4, 4))
    perf = estimate_block_performance(supernet_evaluator(supernet, data(64, 5)), staged, flops)
    assert perf.deltas["accuracy"].block.shape == (2, 3, 3)
    limit = float(np.median(latency.predict_many(list(supernet.space.enumerate()))))
    exact = solve_fractional(perf.numerator(), perf.flops, Limit(latency, upper=limit), constant=perf.base["accuracy"])
    brute = solve_fractional(perf.numerator(), perf.flops, Limit(latency, upper=limit), constant=perf.base["accuracy"], method="brute_force")
    assert exact.objective == pytest.approx(brute.objective, rel=1e-6)
    dynamic = DynamicNetwork(supernet, perf, latency, {"latency": limit}, blocks_per_node=2)
    x = next(iter(data(8, 3)))[0]
    report = dynamic.set_budget({"latency": float(dynamic.resources["latency"].extreme()[0]) + 1e-9})
    assert dynamic.resources["latency"].predict(report.arch) <= float(dynamic.resources["latency"].extreme()[0]) + 1e-9
    with torch.no_grad():
        torch.testing.assert_close(dynamic.eval()(x), supernet.export(report.arch).eval()(x))


# -- existing CNNs: the preset mutate, then the same pipeline -----------------------------------------
def _model(name: str):
    torch.manual_seed(0)
    if name == "torchvision.mobilenet_v2":
        import torchvision

        return torchvision.models.mobilenet_v2(num_classes=4)
    import timm

    return timm.create_model(name, pretrained=False, num_classes=4)


def _images(n: int, seed: int, size: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(4, (n,), generator=g)), batch_size=8)


@pytest.mark.parametrize("name", ["mobilenetv3_large_100", "efficientnet_b0", "resnet18", "torchvision.mobilenet_v2"])
def test_existing_cnn_runs_the_binas_pipeline(name, tmp_path):
    supernet = ln.Supernet(ln.mutate(_model(name), preset="binas"))
    staged = StagedSpace.of(supernet)
    assert any(st.depth_label is not None for st in staged.stages)  # elastic depth became stages
    estimate = ContributionEstimation(_images(16, 1), passes=2)
    profile = LatencyProfiler(tmp_path / "latency.json", input_size=(3, 32, 32), repeats=2, warmup=1, calibration_archs=2)
    # Clipped: one unclipped SGD step on random data can blow a random-init EfficientNet up (overflow in eval).
    pl.Trainer(max_steps=1, callbacks=[UniformSampling(seed=0, per_sample=True), estimate, profile], logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
               default_root_dir=tmp_path).fit(Classifier(supernet), _images(16, 0))
    accuracy, latency = estimate.accuracy_model, profile.latency_table
    assert accuracy.staged.stages == staged.stages and latency.staged.stages == staged.stages
    limit = float(np.median(latency.predict_many(supernet.space.sample_many(30, 1))))
    best = search_constrained(accuracy, Limit(latency, upper=limit))
    assert best.status == "optimal" and latency.predict(best.arch) <= limit + 1e-7
    subnet = supernet.export(best.arch).eval()
    assert type(subnet) is type(supernet.module)
    assert not any(type(m).__module__.startswith("lightning_nas") for m in subnet.modules())
    supernet.eval()
    x = torch.randn(2, 3, 32, 32)
    with supernet.activated(best.arch), torch.no_grad():
        torch.testing.assert_close(subnet(x), supernet(x))
    exported = torch.export.export(subnet, (x,))
    torch.testing.assert_close(exported.module()(x), subnet(x))


def test_mathnas_block_performances_with_shared_decisions_are_exact_for_an_additive_metric():
    """The README network: one width read by seven layers. For a metric that adds up over the
    decisions, switching each node's owned decisions must give back every arch exactly."""
    from lightning_nas.estimators.block_performance import estimate_block_performance, estimate_block_performance_sampled

    supernet = ln.Supernet(nn.Sequential(*_readme_layers()))
    staged = StagedSpace.of(supernet)
    assert staged.shared_labels == ["width"]
    rng = np.random.default_rng(0)
    effect = {label: dict(zip(d.values, rng.normal(size=len(d.values)))) for label, d in zip(supernet.space.labels, supernet.space)}

    def evaluator(archs):
        values = np.array([sum(effect[label][arch[label]] for label in arch if label != "depth") for arch in archs])
        return {"accuracy": values, "flops": 10.0 + values}

    flops = BilinearTable(staged, 5.0, rng.uniform(1, 2, (staged.num_stages, staged.max_blocks, staged.num_configs)), name="flops")
    archs = list(supernet.space.enumerate())
    truth = evaluator(archs)["accuracy"]
    for perf in (estimate_block_performance(evaluator, staged, flops),
                 estimate_block_performance_sampled(evaluator, staged, flops, num_hosts=3, seed=1)):
        np.testing.assert_allclose(perf.predictor(law="additive").predict_many(archs), truth, atol=1e-9)
    # And the search over it runs (the MILP links the width across blocks).
    best = perf.search(law="additive")
    assert best.objective == pytest.approx(truth.max())


def _readme_layers():
    width = ln.Choice([8, 16, 24], "width")
    return [ln.ElasticConv2d(3, width, ln.Choice([3, 5], "stem.kernel"), stride=2), ln.ElasticBatchNorm2d(width), nn.ReLU(),
            ln.OpChoice({"conv": nn.Sequential(ln.ElasticConv2d(width, width, 3), ln.ElasticBatchNorm2d(width), nn.ReLU()),
                         "skip": nn.Identity()}, "op"),
            ln.DepthChoice([nn.Sequential(ln.ElasticConv2d(width, width, 3), nn.ReLU()) for _ in range(3)], [1, 2, 3], "depth"),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), ln.ElasticLinear(width, 10)]


@pytest.mark.parametrize("seed", range(3))
def test_residual_stream_with_an_elastic_width_runs_per_example(seed):
    """A width shared by the residual stream and a DepthChoice over its blocks: rows routed to the
    deeper blocks are computed at the batch's width, so ``x + f(x)`` inside meets ``x`` from outside."""
    torch.manual_seed(seed)
    trunk = ln.Choice([8, 16, 32], "trunk")
    supernet = ln.Supernet(nn.Sequential(
        nn.Flatten(), ln.ElasticLinear(48, trunk), nn.ReLU(),
        ln.DepthChoice([ResidualMLP(trunk, ln.Choice([8, 16], f"hidden{b}")) for b in range(3)], [0, 1, 2, 3], "blocks"),
        nn.Sequential(ln.OpChoice({"relu": nn.ReLU(), "tanh": nn.Tanh()}, "head_act"), ln.ElasticLinear(trunk, 4))))
    x = next(iter(data(32, seed)))[0]
    archs = supernet.space.sample_many(32, seed)
    for i, arch in enumerate(archs):  # the widest trunk only in rows that stop before the blocks
        arch["blocks"], arch["trunk"] = (0, 32) if i % 2 else (arch["blocks"] or 1, [8, 16][i % 4 // 2])
    supernet.activate(archs)
    out = supernet(x)
    out.square().sum().backward()  # and it trains
    with torch.no_grad():
        alone = torch.cat([supernet.export(arch)(x[i : i + 1]) for i, arch in enumerate(archs)])
    torch.testing.assert_close(out.detach(), alone, rtol=1e-5, atol=1e-5)


def test_the_largest_arch_of_the_preset_keeps_every_squeeze_excitation():
    """space.largest() is the heaviest subnet (in-place distillation's teacher, eval_arch="largest")."""
    space = ln.Supernet(ln.mutate(_model("mobilenetv3_large_100"), preset="binas")).space
    se = [label for label in space.labels if label.endswith(".se")]
    assert len(se) == 8 and {space.largest()[label] for label in se} == {"original"} == {space.default()[label] for label in se}
    assert {space.smallest()[label] for label in se} == {"none"}
    # Every width and depth at the original's (the largest), kernels zero-padded beyond it.
    assert all(space.largest()[label] == space.default()[label] for label in space.labels if not label.endswith(".kernel_size"))
