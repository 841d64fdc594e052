"""Every task's training and test loss against a hand computation in float64, built the way a run builds it
(the task's parser, its `train_loss(settings)`), so that a flag is shown to reach the loss it names.

The hand computation spells out the formulas of the paper's recipes (../paper/README.md): cross-entropy
with label smoothing 0.1 for the CIFAR tasks (soft mixup/cutmix targets smoothed alike), none at test;
TET (Deng et al., 2022) for CIFAR10-DVS, (1 - 1e-3) x the mean over steps of cross-entropy + 1e-3 x the
MSE of every output to 1.0, and for ImageNet the mean over steps of cross-entropy alone.
"""
import importlib
import math

import pytest
import torch

N, T, C = 6, 4, 5


def log_softmax(z: torch.Tensor) -> torch.Tensor:
    """By hand, one row at a time: z_c - log(sum_j exp(z_j))."""
    rows = []
    for row in z:
        top = max(row.tolist())
        log_sum = top + math.log(sum(math.exp(v - top) for v in row.tolist()))
        rows.append([v - log_sum for v in row.tolist()])
    return torch.tensor(rows, dtype=torch.float64)


def cross_entropy(z: torch.Tensor, q: torch.Tensor) -> float:
    """The mean over samples of -sum_c q_c log p_c."""
    return float(-(q * log_softmax(z)).sum(-1).mean())


def smoothed(q: torch.Tensor, eps: float) -> torch.Tensor:
    return (1 - eps) * q + eps / q.shape[-1]


def one_hot(y: torch.Tensor) -> torch.Tensor:
    return torch.eye(C, dtype=torch.float64)[y]


def task(name: str):
    return importlib.import_module(f"{name}.train").TASK


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, C, generator=g, dtype=torch.float64) * 3, torch.randint(0, C, (N,), generator=g)


@pytest.mark.parametrize("name", ["cifar10", "sequential_cifar"])
@pytest.mark.parametrize("flags,eps", [([], 0.1), (["--label-smoothing", "0.3"], 0.3), (["--label-smoothing", "0"], 0)])
def test_cifar_losses_are_smoothed_cross_entropy_in_training_and_plain_at_test(name, flags, eps, batch):
    z, y = batch
    t = task(name)
    settings = t.parse(["--device", "cpu", *flags])
    assert float(t.train_loss(settings)(z, y)) == pytest.approx(cross_entropy(z, smoothed(one_hot(y), eps)), rel=1e-12)
    mixed = 0.7 * one_hot(y) + 0.3 * one_hot(y.roll(1))  # mixup's soft targets are smoothed too
    assert float(t.train_loss(settings)(z, mixed)) == pytest.approx(cross_entropy(z, smoothed(mixed, eps)), rel=1e-12)
    assert float(t.test_loss(settings)(z, y)) == pytest.approx(cross_entropy(z, one_hot(y)), rel=1e-12)
    assert torch.equal(t.scores(z), z)


def test_cifar10dvs_trains_with_tet_and_its_mse_term_and_tests_on_the_mean_logits():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(N, T, C, generator=g, dtype=torch.float64) * 2  # the DVS network's [N, T, C]
    y = torch.randint(0, C, (N,), generator=g)
    t = task("cifar10dvs")
    for flags, weight in (([], 1e-3), (["--tet-mse-weight", "0.25"], 0.25)):
        settings = t.parse(["--device", "cpu", *flags])
        per_step = sum(cross_entropy(z[:, s], one_hot(y)) for s in range(T)) / T
        mse = float(((z - 1.0) ** 2).mean())
        assert float(t.train_loss(settings)(z, y)) == pytest.approx((1 - weight) * per_step + weight * mse, rel=1e-12)
    no_tet = t.parse(["--device", "cpu", "--no-tet"])
    assert float(t.train_loss(no_tet)(z, y)) == pytest.approx(cross_entropy(z.mean(1), one_hot(y)), rel=1e-12)
    assert float(t.test_loss(settings)(z, y)) == pytest.approx(cross_entropy(z.mean(1), one_hot(y)), rel=1e-12)
    assert torch.allclose(t.scores(z), z.mean(1))


def test_imagenet_trains_and_tests_with_tet_without_the_mse_term():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(T, N, C, generator=g, dtype=torch.float64) * 2  # SEW ResNet's [T, N, C]
    y = torch.randint(0, C, (N,), generator=g)
    t = task("imagenet")
    settings = t.parse(["--device", "cpu"])
    per_step = sum(cross_entropy(z[s], one_hot(y)) for s in range(T)) / T
    assert float(t.train_loss(settings)(z, y)) == pytest.approx(per_step, rel=1e-12)
    assert float(t.test_loss(settings)(z, y)) == pytest.approx(per_step, rel=1e-12)  # as the original logged it
    no_tet = t.parse(["--device", "cpu", "--no-tet"])
    assert float(t.train_loss(no_tet)(z, y)) == pytest.approx(cross_entropy(z.mean(0), one_hot(y)), rel=1e-12)
    assert torch.allclose(t.scores(z), z.mean(0))
