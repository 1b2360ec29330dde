import copy

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.callbacks import UniformSampling
from lightning_nas.demo import SupernetClassifier
from lightning_nas.distillation import distillation_kl, inplace_distillation_loss
from lightning_nas.spaces import binas_supernet, mobilenet_supernet

SUPERNETS = {
    "mobilenet": lambda: mobilenet_supernet(num_classes=4, stem_channels=8, stages=((8, 1, 2), (16, 2, 2)), head_channels=16),
    "binas": lambda: binas_supernet("tiny", num_classes=4, stage_channels=(8, 8, 16), head_channels=(16, 16)),
}


@pytest.mark.parametrize("name", sorted(SUPERNETS))
def test_teacher_and_per_example_students_backpropagate_together(name):
    # Two train-mode forwards through the same BatchNorms, one backward: the second forward's
    # running-statistics update must not invalidate what the first saved (either order).
    torch.manual_seed(0)
    supernet = SUPERNETS[name]().train()
    x, y = torch.randn(6, 3, 16, 16), torch.randint(4, (6,))
    for order in range(2):
        indices = supernet.space.sample_indices(6, order)
        supernet.activate_indices(indices)
        if order == 0:
            loss, _ = inplace_distillation_loss(supernet, x, y)
        else:
            students = supernet(x)
            with supernet.activated(supernet.space.largest()):
                teacher = supernet(x)
            loss = nn.functional.cross_entropy(teacher, y) + distillation_kl(students, teacher)
        supernet.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in supernet.parameters() if p.grad is not None)


def test_loss_is_teacher_cross_entropy_plus_kl_and_keeps_the_students_active():
    torch.manual_seed(1)
    supernet = SUPERNETS["mobilenet"]().eval()  # eval: both forwards deterministic and comparable
    x, y = torch.randn(5, 3, 16, 16), torch.randint(4, (5,))
    indices = supernet.space.sample_indices(5, 3)
    supernet.activate_indices(indices)
    before = supernet.active_arch
    loss, students = inplace_distillation_loss(supernet, x, y, temperature=2.0)
    assert supernet.active_arch == before
    with torch.no_grad():
        expected_students = supernet(x)
        with supernet.activated(supernet.space.largest()):
            teacher = supernet(x)
        p_t = torch.softmax(teacher / 2, 1)
        kl = (p_t * (p_t.log() - torch.log_softmax(expected_students / 2, 1))).sum(1).mean() * 4
        expected = nn.functional.cross_entropy(teacher, y) + kl
    torch.testing.assert_close(students, expected_students)
    torch.testing.assert_close(loss, expected)


def test_student_term_does_not_push_the_teacher():
    # The KL term treats the teacher's logits as constants: the teacher learns from the labels only.
    teacher = torch.randn(4, 3, requires_grad=True)
    student = torch.randn(4, 3, requires_grad=True)
    distillation_kl(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.5, 4.0))
def test_kl_is_nonnegative_and_zero_only_at_the_teacher(seed, temperature):
    g = torch.Generator().manual_seed(seed)
    teacher, student = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert distillation_kl(student, teacher, temperature) > 0
    assert distillation_kl(teacher + 3.0, teacher, temperature).abs() < 1e-5  # shift-invariant softmax


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="temperature"):
        distillation_kl(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="student_logits"):
        distillation_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="supernet"):
        inplace_distillation_loss(nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="distill"):
        SupernetClassifier(nn.Linear(2, 2), 2, distill=True)


def _largest_subnet_loss_before_and_after_training(precision: str, batch_statistics: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest subnet's loss on the training data before and after a short Trainer run with
    per-example sampling and distillation (running statistics, or the data's own with ``batch_statistics``)."""
    torch.manual_seed(0)
    supernet = SUPERNETS["binas"]()
    x = torch.randn(64, 3, 16, 16)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = SupernetClassifier(supernet, 4, lr=0.1, epochs=12, distill=True)
    trainer = pl.Trainer(max_epochs=12, accelerator="cpu", precision=precision, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[UniformSampling(0, per_sample=True)])

    def largest_loss() -> torch.Tensor:
        supernet.activate(supernet.space.largest())
        # A copy in training mode leaves the supernet's running statistics alone.
        net = copy.deepcopy(supernet).train() if batch_statistics else supernet.eval()
        with torch.no_grad():
            return nn.functional.cross_entropy(net(x), y)

    before = largest_loss()
    supernet.train()
    trainer.fit(model, loader)
    after = largest_loss()
    assert all(bool(torch.isfinite(b).all()) for b in supernet.buffers() if b.is_floating_point())
    return before, after


def test_trainer_with_per_example_sampling_and_distillation_learns():
    before, after = _largest_subnet_loss_before_and_after_training("32-true", batch_statistics=False)
    assert after < 0.6 * before, (before, after)


def test_trainer_under_bf16_mixed_precision_learns():
    # Lightning's autocast with per-example sampling and distillation. Judged with batch statistics: after
    # 48 steps the running statistics of this tiny run lag far behind the weights in float32 as well.
    before, after = _largest_subnet_loss_before_and_after_training("bf16-mixed", batch_statistics=True)
    assert after < 0.6 * before, (before, after)


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), True, "2"])
def test_temperature_must_be_a_finite_positive_float(temperature):
    with pytest.raises(ValueError, match=r"`temperature` must be a finite float > 0, got"):
        distillation_kl(torch.zeros(2, 3), torch.zeros(2, 3), temperature)


def test_channels_last_classifier_keeps_its_weights_and_inputs_channels_last_and_computes_the_same():
    torch.manual_seed(0)
    contiguous = SUPERNETS["binas"]()
    model = SupernetClassifier(copy.deepcopy(contiguous), 4, distill=True, channels_last=True)
    reference = SupernetClassifier(contiguous, 4, distill=True)
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs) and not all(p.is_contiguous() for p in convs)
    x = torch.randn(8, 3, 16, 16)
    assert model._layout(x).is_contiguous(memory_format=torch.channels_last) and model._layout(x[:, 0, 0]).dim() == 2
    indices = contiguous.space.sample_indices(8, torch.Generator().manual_seed(1))
    outputs = []
    for m in (reference, model):
        m.supernet.train().activate_indices(indices)
        out = m(x)
        (out.square().mean() + inplace_distillation_loss(m.supernet, m._layout(x), torch.arange(8) % 4)[0]).backward()
        outputs.append((out, [p.grad for p in m.parameters()]))
    (a, grads_a), (b, grads_b) = outputs
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b):
        assert (ga is None) == (gb is None)
        if ga is not None:
            torch.testing.assert_close(gb, ga, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="`channels_last` must be a bool"):
        SupernetClassifier(nn.Linear(2, 2), 2, channels_last="yes")
