"""The GPU paths: per-example supernets, export, estimation and the callbacks on a CUDA device.

Skipped on machines without CUDA (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.callbacks import LatencyProfiler, UniformSampling
from lightning_nas.callbacks.contribution import ContributionEstimation
from lightning_nas.estimators import estimate_contributions, measure_subnet_accuracies
from lightning_nas.spaces import binas_supernet, mobilenet_supernet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def prototype_dataset(n: int, seed: int, classes: int = 4, size: int = 16) -> TensorDataset:
    """Noisy copies of one random image per class: learnable in a few steps."""
    prototypes = torch.randn(classes, 3, size, size, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=g)
    return TensorDataset(prototypes[labels] + 0.5 * torch.randn(n, 3, size, size, generator=g), labels)


def test_per_example_forward_and_export_on_cuda_match_cpu():
    torch.manual_seed(0)
    supernet = binas_supernet(preset="tiny").eval()
    x = torch.randn(16, 3, 32, 32)
    indices = supernet.space.sample_indices(16, seed=3)
    supernet.activate_indices(indices)
    with torch.no_grad():
        on_cpu = supernet(x)
        supernet.cuda().activate_indices(indices)  # indices given on the CPU are moved to the supernet's device
        on_gpu = supernet(x.cuda())
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=1e-3)

    arch = supernet.space.sample(seed=4)
    subnet = supernet.export(arch)
    assert all(p.is_cuda for p in subnet.parameters())
    with torch.no_grad(), supernet.activated(arch):
        torch.testing.assert_close(subnet.eval()(x.cuda()), supernet(x.cuda()), atol=1e-5, rtol=1e-4)


class RecordDevice(pl.Callback):
    """The module's device when training ends (the Trainer moves it back to the CPU at teardown)."""

    def on_train_end(self, trainer, pl_module):
        self.device = pl_module.device


class Classifier(pl.LightningModule):
    def __init__(self, supernet):
        super().__init__()
        self.supernet = supernet

    def forward(self, x):
        return self.supernet(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.supernet(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def test_trainer_on_gpu_with_the_callbacks_matches_a_cpu_estimate(tmp_path):
    pl.seed_everything(0, verbose=False)
    torch.manual_seed(0)
    supernet = mobilenet_supernet(num_classes=4, stem_channels=8, stages=((8, 1, 2), (16, 2, 2)), expand_ratios=(1, 2),
                                  kernel_sizes=(3,), head_channels=16)
    train = DataLoader(prototype_dataset(128, seed=0), batch_size=32, shuffle=True)
    held_out = DataLoader(prototype_dataset(96, seed=2), batch_size=32)
    estimation = ContributionEstimation(held_out, seed=3)
    profiler = LatencyProfiler(tmp_path / "latency.json", device="cuda", batch_size=8, repeats=5, warmup=2, calibration_archs=3)
    recorder = RecordDevice()
    trainer = pl.Trainer(max_epochs=1, accelerator="gpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[UniformSampling(0, per_sample=True), estimation, profiler, recorder])
    model = Classifier(supernet)
    trainer.fit(model, train)
    assert recorder.device.type == "cuda"
    assert profiler.latency_table.metadata["device"]["device_type"] == "cuda"
    assert np.isfinite(profiler.latency_table.block).all() and profiler.latency_table.metadata["measurements"] > 0

    on_gpu = estimation.accuracy_model
    on_cpu = estimate_contributions(model.supernet.cpu(), held_out, seed=3)  # the Trainer left it on the CPU anyway
    assert on_gpu.metadata["examples"] == on_cpu.metadata["examples"] == 96
    # Same draws, same weights: only a near-tie whose argmax flips between the devices may differ.
    assert on_gpu.constant == pytest.approx(on_cpu.constant, abs=2 / 96)
    assert np.abs(on_gpu.block - on_cpu.block).max() <= 0.25

    # The log-error fit keeps its records on the model's device (a DDP sync gathers them there).
    log_cpu = estimate_contributions(model.supernet, held_out, passes=3, seed=3, fit="log_error", allocation="adaptive")
    log_gpu = estimate_contributions(model.supernet.cuda(), held_out, passes=3, seed=3, fit="log_error", allocation="adaptive")
    assert log_gpu.link == "log_error" and log_gpu.metadata["held_out_examples"] == 96
    assert abs(log_gpu.metadata["examples"] - log_cpu.metadata["examples"]) <= 96  # margins decide the allocation
    assert log_gpu.metadata["base_accuracy"] == pytest.approx(log_cpu.metadata["base_accuracy"], abs=0.1)
    model.supernet.cpu()

    archs = model.supernet.space.sample_many(5, seed=1)
    on_cpu_acc = measure_subnet_accuracies(model.supernet, archs, held_out)
    on_gpu_acc = measure_subnet_accuracies(model.supernet.cuda(), archs, held_out)
    np.testing.assert_allclose(on_gpu_acc, on_cpu_acc, atol=2 / 96)


def test_per_example_step_never_syncs_and_captures_as_a_cuda_graph():
    """A per-example training step with static shapes makes no GPU sync (the device's own check),
    and replays from a CUDA graph with the same result as eager for fresh architectures."""
    torch.manual_seed(0)
    supernet = mobilenet_supernet().cuda().train()
    x, y = torch.randn(32, 3, 32, 32, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    supernet.activate_indices(supernet.space.sample_indices(32, seed=0))
    supernet(x).sum().backward()  # warm-up: lazily built tables and cuDNN plans
    supernet.activate_indices(supernet.space.sample_indices(32, seed=5))  # activation copies to the GPU: outside the step
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.nn.functional.cross_entropy(supernet(x), y).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")

    # CUDA graph: indices live in static buffers that each step overwrites in place.
    indices = {label: idx.cuda() for label, idx in supernet.space.sample_indices(32, seed=1).items()}
    supernet.activate_indices(indices)
    static = {label: supernet.context.indices[label] for label in indices}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            supernet.zero_grad(set_to_none=False)
            torch.nn.functional.cross_entropy(supernet(x), y).backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    supernet.zero_grad(set_to_none=False)
    supernet.context.clear_cache()  # masks derived from the indices must be computed inside the graph
    with torch.cuda.graph(graph):
        loss = torch.nn.functional.cross_entropy(supernet(x), y)
        loss.backward()
    fresh = supernet.space.sample_indices(32, seed=2)
    for label, idx in fresh.items():
        static[label].copy_(idx)
    supernet.zero_grad(set_to_none=False)
    graph.replay()
    replayed = loss.detach().clone()
    eager = mobilenet_supernet().cuda().train()
    eager.load_state_dict(supernet.state_dict())
    eager.activate_indices(fresh)
    torch.testing.assert_close(replayed, torch.nn.functional.cross_entropy(eager(x), y), atol=1e-4, rtol=1e-4)
