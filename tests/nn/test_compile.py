"""``torch.compile`` of supernet training steps: no graph breaks, one graph for every per-example batch.

Every space compiles with ``aot_eager`` (Dynamo's graph capture and AOT autograd's joint forward +
backward graph, run by eager kernels): what breaks graphs or recompiles is decided there, before
inductor. The BINAS space, whose per-example training is the method's own, also compiles with
inductor, the default backend (about 100 s on this loaded 2-core machine); set
``LIGHTNING_NAS_INDUCTOR_TESTS=1`` to run every space with inductor.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

import lightning_nas as ln
from lightning_nas.spaces import binas_supernet, mobilenet_supernet, nb201_supernet

ALL_INDUCTOR = os.environ.get("LIGHTNING_NAS_INDUCTOR_TESTS") == "1"


def small_mobilenet():
    return mobilenet_supernet(stem_channels=8, stages=((8, 1, 2),), head_channels=8)


def small_binas():
    # Two stages with optional blocks (a DepthChoice), every norm kind: the expansion norm, the
    # per-kernel and per-(ratio, SE) candidate norms.
    return binas_supernet(
        "tiny", num_classes=5, stem_channels=8, ds_channels=8, stage_channels=(8, 16), stage_strides=(1, 2),
        stage_activations=("relu", "hswish"), min_depth=1, max_depth=2, head_channels=(16, 16),
    )


def timm_model():
    # A user's model decorated by the BINAS preset: elastic widths and kernels, SE on/off
    # (OpChoice), stage depths (DepthChoice) over timm's own blocks and norm-act layers.
    import timm

    return ln.Supernet(ln.mutate(timm.create_model("mobilenetv3_small_050", num_classes=5), preset="binas"))


def small_nb201():
    # A cell space: every edge an OpChoice of convolutions with norms, a pool, skip and zero.
    return nb201_supernet(channels=4, cells_per_stage=1)


SUPERNETS = {"mobilenet": small_mobilenet, "binas": small_binas, "timm": timm_model, "nb201": small_nb201}


def loss_of(net, x):
    return net(x).square().mean()


def assert_same_step(step, net, eager, x, *, atol, rtol, grad_atol=None, zero_for_missing=False):
    """``step(net, x)`` (compiled) and ``loss_of(eager, x)`` give the same loss and, after backward, the
    same gradients (absolute tolerance ``grad_atol`` (default ``atol``) times the gradient's largest
    magnitude, at least 1; ``zero_for_missing``: a gradient the eager step does not make may be zero)."""
    for model in (net, eager):
        model.zero_grad(set_to_none=True)
    compiled_loss, eager_loss = step(net, x), loss_of(eager, x)
    compiled_loss.backward()
    eager_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, atol=atol, rtol=rtol)
    for (name, p), q in zip(net.named_parameters(), eager.parameters()):
        if q.grad is None and zero_for_missing:
            assert p.grad is None or not p.grad.any(), name
            continue
        scale = 1.0 if q.grad is None else max(1.0, float(q.grad.abs().max()))
        torch.testing.assert_close(p.grad, q.grad, atol=(atol if grad_atol is None else grad_atol) * scale, rtol=rtol, msg=name)


@pytest.mark.parametrize("space", SUPERNETS)
def test_per_example_step_has_no_graph_breaks(space):
    torch.manual_seed(0)
    net = SUPERNETS[space]().train()
    net.static_shapes = True
    net.activate_indices(net.space.sample_indices(4, 0))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(loss_of)(net, torch.randn(4, 3, 8, 8))
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize(
    ("space", "backend", "device"),
    [(space, "aot_eager", "cpu") for space in SUPERNETS]
    + [(space, "inductor", "cpu") for space in SUPERNETS if ALL_INDUCTOR or space == "binas"]
    + [pytest.param("binas", "inductor", "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
def test_per_example_and_fixed_arch_steps_compile_whole_and_exact(space, backend, device, monkeypatch):
    # Full float32 convolutions on a GPU (cuDNN takes TF32 by default), so that compiled and eager differ
    # by rounding only (products already run in float32: torch's default matmul precision, "highest").
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    net = SUPERNETS[space]().to(device).train()
    net.static_shapes = True  # what "auto" takes under compile; the eager copy then runs static shapes too
    eager = copy.deepcopy(net)
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.backends.registry.lookup_backend(backend)(gm, example_inputs)

    torch._dynamo.reset()
    step = torch.compile(loss_of, backend=counting, fullgraph=True)  # fullgraph: a graph break raises
    x = torch.randn(4, 3, 8, 8, device=device)
    activations = [net.space.sample_indices(4, seed) for seed in range(2)] + [net.space.largest()]
    for arch in activations:
        for model in (net, eager):
            (model.activate_indices if isinstance(next(iter(arch.values())), torch.Tensor) else model.activate)(arch)
        # Compiled, kernel decisions run as one convolution per kernel size (eager: one of per-row
        # filters): the same sums in another order, so float rounding scales with the gradient.
        assert_same_step(step, net, eager, x, atol=1e-6, rtol=1e-5)
        for (name, b), c in zip(net.named_buffers(), eager.buffers()):
            torch.testing.assert_close(b, c, atol=1e-6, rtol=1e-5, msg=name)
    # One graph serves both per-example batches (shapes fixed by the candidate lists); the
    # fixed architecture is a second one.
    assert len(graphs) == 2


def test_trainer_fits_with_the_supernet_compiled_in_place():
    """The documented Trainer path: the supernet compiled in place (``nn.Module.compile``: same
    module, same state-dict keys) inside an ordinary LightningModule, per-example sampling from the
    callback: every step runs the one compiled graph, and training ends where the eager run ends."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_nas.callbacks import UniformSampling
    from lightning_nas.classification import SupernetClassifier

    torch.manual_seed(0)
    net = small_binas()
    net.static_shapes = True
    model = SupernetClassifier(net, 5, lr=0.05)
    eager = copy.deepcopy(model)
    before = copy.deepcopy(model.state_dict())
    data = TensorDataset(torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 5)
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.backends.registry.lookup_backend("aot_eager")(gm, example_inputs)

    torch._dynamo.reset()
    model.supernet.compile(backend=counting)
    for module in (model, eager):
        trainer = pl.Trainer(
            max_steps=4, callbacks=[UniformSampling(0, per_sample=True)], logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
        )
        trainer.fit(module, DataLoader(data, batch_size=4))
    assert len(graphs) == 1  # four batches of different per-example subnets, one graph
    assert model.state_dict().keys() == before.keys()
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        scale = max(1.0, float(q.abs().max()))
        torch.testing.assert_close(p, q, atol=1e-5 * scale, rtol=1e-5, msg=name)
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_auto_static_shapes_compile_whole_on_a_cpu():
    """``static_shapes="auto"`` (the default) groups rows in an eager step on a CPU but takes static
    shapes while torch.compile traces: the compiled step is one graph (``fullgraph``) and computes
    what the eager grouped step computes."""
    torch.manual_seed(0)
    net = small_binas().train()
    assert net.static_shapes == "auto" and not net.context.static_shapes  # a CPU: grouped rows when eager
    eager = copy.deepcopy(net)
    torch._dynamo.reset()
    step = torch.compile(loss_of, backend="aot_eager", fullgraph=True)
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for seed in range(2):
        indices = net.space.sample_indices(6, seed)
        for model in (net, eager):
            model.activate_indices(indices)
        # Grouped rows give no gradient to what no row uses; static shapes a zero one.
        assert_same_step(step, net, eager, x, atol=1e-5, rtol=1e-4, grad_atol=1e-4, zero_for_missing=True)
    assert not net.context.static_shapes  # eager again
