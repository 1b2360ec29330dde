"""UniformSampling: determinism, per-example mode, evaluation archs, resume, bad arguments."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_nas as ln
from lightning_nas.callbacks import UniformSampling

sys.path.insert(0, str(Path(__file__).parent))
from sandwich import sandwich_gradient  # noqa: E402


def tiny_supernet() -> ln.Supernet:
    width = ln.Choice([4, 8, 16], "width")
    return ln.Supernet(
        nn.Sequential(
            ln.ElasticLinear(6, width),
            ln.OpChoice([nn.ReLU(), nn.Tanh(), nn.Identity()], "act"),
            ln.DepthChoice([nn.Sequential(ln.ElasticLinear(width, width), nn.ReLU()) for _ in range(3)], [1, 2, 3], "depth"),
            ln.ElasticLinear(width, 3),
        )
    )


class Classifier(pl.LightningModule):
    """An ordinary LightningModule; the supernet sits two attributes deep."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Module()
        self.backbone.net = tiny_supernet()

    def forward(self, x):
        return self.backbone.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class RecordArchs(pl.Callback):
    """Reads the active arch right after UniformSampling set it (callbacks run in list order)."""

    def __init__(self) -> None:
        self.train, self.val = {}, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train[(trainer.global_step, batch_idx % trainer.accumulate_grad_batches)] = pl_module.backbone.net.active_arch

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val.append(pl_module.backbone.net.active_arch)


def loader(n: int = 48, batch_size: int = 6) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)), batch_size=batch_size)


def fit(callbacks, *, max_epochs=1, max_steps=-1, ckpt_path=None, val=False, model=None, **trainer_kwargs):
    model = model or Classifier()
    trainer = pl.Trainer(
        max_epochs=max_epochs, max_steps=max_steps, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=2 if val else 0, accelerator="cpu", devices=1, **trainer_kwargs,
    )
    trainer.fit(model, loader(), loader(12) if val else None, ckpt_path=ckpt_path)
    return trainer, model


def test_same_seed_same_archs_and_seed_matters():
    runs = []
    for seed in (7, 7, 8):
        record = RecordArchs()
        fit([UniformSampling(seed), record])
        runs.append(record.train)
    assert len(runs[0]) == 8
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert len({str(a) for a in runs[0].values()}) > 1  # it really samples


def test_per_sample_mode_activates_one_arch_per_example():
    record = RecordArchs()
    fit([UniformSampling(0, per_sample=True), record], max_steps=3)
    archs = list(record.train.values())
    assert all(isinstance(a, list) and len(a) == 6 for a in archs)
    assert len({str(a) for a in archs[0]}) > 1


def test_gradient_accumulation_gets_a_fresh_arch_per_micro_batch():
    record = RecordArchs()
    fit([UniformSampling(0), record], accumulate_grad_batches=2)
    assert len(record.train) == 8 and len({k[0] for k in record.train}) == 4


@pytest.mark.parametrize("mode", ["largest", "smallest", "default", {"width": 8, "act": 1, "depth": 2}])
def test_evaluation_arch_modes(mode):
    record = RecordArchs()
    _, model = fit([UniformSampling(0, eval_arch=mode), record], val=True)
    space = model.backbone.net.space
    expected = mode if isinstance(mode, dict) else getattr(space, mode)()
    assert record.val and all(a == expected for a in record.val)


def test_per_sample_evaluation_is_the_same_every_validation():
    record = RecordArchs()
    fit([UniformSampling(0, eval_arch="per_sample"), record], max_epochs=2, val=True)
    assert len(record.val) == 4
    assert record.val[:2] == record.val[2:]
    assert all(isinstance(a, list) for a in record.val)


def test_resume_mid_epoch_continues_the_identical_sequence(tmp_path):
    full = RecordArchs()
    fit([UniformSampling(3), full], max_epochs=2)
    assert len(full.train) == 16

    first = RecordArchs()
    trainer, model = fit([UniformSampling(3), first], max_epochs=2, max_steps=5)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)

    second = RecordArchs()
    # A different seed on the command line: the checkpoint's state wins, with a warning.
    with pytest.warns(UserWarning, match="checkpoint's seed 3"):
        fit([UniformSampling(99), second], max_epochs=2, ckpt_path=str(ckpt))
    # Lightning decides how much data a resumed epoch replays; whatever steps run, each step's
    # architecture is the uninterrupted run's.
    assert min(second.train) == (5, 0) and len(second.train) >= 5
    assert all(full.train[step] == arch for step, arch in {**first.train, **second.train}.items())


def test_state_dict_round_trip():
    cb = UniformSampling(5, per_sample=True)
    cb.sampled = 12
    other = UniformSampling(5)
    other.load_state_dict(cb.state_dict())
    assert (other.seed, other.per_sample, other.sampled) == (5, True, 12)
    other.load_state_dict({})  # older checkpoints: defaults stay
    assert other.seed == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, r"`seed` must be a non-negative int, got -1"),
        ({"seed": 1.5}, r"`seed` must be a non-negative int, got 1.5"),
        ({"per_sample": "yes"}, r"`per_sample` must be a bool, got 'yes'"),
        ({"eval_arch": "biggest"}, r"`eval_arch` must be one of \('per_sample', 'largest', 'smallest', 'default'\) or an arch dict, got 'biggest'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(MisconfigurationException, match=message):
        UniformSampling(**kwargs)


def test_bad_eval_arch_and_missing_supernet_fail_at_setup():
    with pytest.raises(MisconfigurationException, match=r"`eval_arch` is not an architecture.*'width'.*allowed values: \[4, 8, 16\]"):
        fit([UniformSampling(eval_arch={"width": 5, "act": 0, "depth": 1})], max_steps=1)

    class Plain(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.backbone.net = nn.Linear(6, 3)

    with pytest.raises(MisconfigurationException, match="no Supernet found in Plain"):
        fit([UniformSampling()], max_steps=1, model=Plain())


# -- the sandwich rule -------------------------------------------------------------------------
@pytest.mark.parametrize("per_sample", [False, True])
def test_sandwich_step_applies_teacher_plus_distilled_students_gradient(per_sample):
    # One SGD step (no momentum) moves the weights by -lr * gradient: it must be the hand-made one.
    cb = UniformSampling(4, sandwich=True, num_random=2, per_sample=per_sample, log_students=False)
    before = Classifier()
    trainer, model = fit([cb], max_steps=1, model=Classifier())
    x, y = next(iter(loader()))
    expected = sandwich_gradient(before, before.backbone.net, cb, x, y)
    for p0, p1, g in zip(before.parameters(), model.parameters(), expected):
        torch.testing.assert_close(p1.detach(), p0.detach() - 0.05 * g, rtol=1e-5, atol=1e-6)
    students = cb.student_archs(6, 0, 0)
    assert list(students) == ["smallest", "random0", "random1"]
    assert students["smallest"] == model.backbone.net.space.smallest()


def test_sandwich_activates_the_largest_for_the_training_step_and_is_reproducible():
    runs = []
    for seed in (2, 2, 3):
        record = RecordArchs()
        cb = UniformSampling(seed, sandwich=True, num_random=1)
        _, model = fit([cb, record], max_steps=4)
        assert all(a == model.backbone.net.space.largest() for a in record.train.values())
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))  # the seed picks the random students


def test_sandwich_students_of_a_step_are_a_pure_function_of_seed_step_micro():
    model = Classifier()
    a, b = UniformSampling(1, sandwich=True, num_random=3), UniformSampling(1, sandwich=True, num_random=3)
    for cb in (a, b):
        cb._supernet = model.backbone.net
    assert a.student_archs(6, 5, 1) == b.student_archs(6, 5, 1)
    assert a.student_archs(6, 5, 1) != a.student_archs(6, 6, 1)
    assert a.student_archs(6, 5, 0) != a.student_archs(6, 5, 1)


def test_sandwich_logs_student_losses_and_scales_them_under_accumulation():
    class Logged(Classifier):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.seen = dict(self.trainer.callback_metrics)

    cb = UniformSampling(0, sandwich=True, num_random=1)
    _, model = fit([cb], max_steps=1, model=Logged())
    assert {"sandwich/smallest_kd", "sandwich/random0_kd"} <= set(model.seen)
    # Accumulating two micro-batches averages their sandwich gradients, the students' as the teacher's.
    cb2 = UniformSampling(0, sandwich=True, num_random=0, log_students=False)
    _, accumulated = fit([cb2], max_steps=1, accumulate_grad_batches=2, model=Classifier())
    before = Classifier()
    batches = iter(loader())
    grads = [sandwich_gradient(before, before.backbone.net, cb2, *next(batches)) for _ in range(2)]
    for p0, p1, g1, g2 in zip(before.parameters(), accumulated.parameters(), *grads):
        torch.testing.assert_close(p1.detach(), p0.detach() - 0.05 * (g1 + g2) / 2, rtol=1e-5, atol=1e-6)


def test_sandwich_step_without_loss_trains_no_students():
    class Skipping(Classifier):
        def training_step(self, batch, batch_idx):
            self(batch[0])
            return None

    before = Classifier()
    _, model = fit([UniformSampling(0, sandwich=True)], max_steps=2, max_epochs=1, model=Skipping(), limit_train_batches=2)
    assert all(torch.equal(a, b) for a, b in zip(before.parameters(), model.parameters()))


def test_sandwich_state_round_trip_and_resume_warning():
    cb = UniformSampling(5, sandwich=True, num_random=3, temperature=2.0)
    state = cb.state_dict()
    assert (state["sandwich"], state["num_random"], state["temperature"]) == (True, 3, 2.0)
    other = UniformSampling(5)
    with pytest.warns(UserWarning, match="checkpoint's sandwich=True"):
        other.load_state_dict(state)
    assert (other.sandwich, other.num_random, other.temperature) == (True, 3, 2.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sandwich": 1}, r"`sandwich` must be a bool, got 1"),
        ({"num_random": -1}, r"`num_random` must be an int >= 0 \(random students per step\), got -1"),
        ({"temperature": 0.0}, r"`temperature` must be a finite float > 0, got 0.0"),
        ({"log_students": None}, r"`log_students` must be a bool, got None"),
    ],
)
def test_sandwich_bad_arguments(kwargs, message):
    with pytest.raises(MisconfigurationException, match=message):
        UniformSampling(**kwargs)


def test_sandwich_refuses_manual_optimisation():
    class Manual(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            return None

    with pytest.raises(MisconfigurationException, match="automatic optimisation"):
        fit([UniformSampling(sandwich=True)], max_steps=1, model=Manual())


def test_sequence_logits_are_distilled_per_position_and_logits_are_found_in_outputs():
    from types import SimpleNamespace

    from lightning_nas.distillation import distillation_kl, logits_of

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    torch.testing.assert_close(distillation_kl(student, teacher, 2.0), distillation_kl(student.reshape(10, 7), teacher.reshape(10, 7), 2.0))
    for output in (student, SimpleNamespace(logits=student), {"logits": student}, (student, None)):
        assert logits_of(output) is student
    with pytest.raises(ValueError, match=r"cannot find the logits in the network's output of type str"):
        logits_of("nope")
    with pytest.raises(ValueError, match=r"must both be \(B, K\) or \(B, ..., K\) of one shape"):
        distillation_kl(torch.zeros(3), torch.zeros(3))
