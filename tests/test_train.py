import math

import pytest
import torch
from torch import nn

from harness.train import TrainConfig, WorkMeter, lr_factor, soft_cross_entropy, train_model


def blobs(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 5, generator=g) + 2.0 * (y.float() * 2 - 1).unsqueeze(1)
    return x, y


def test_training_learns_and_counts_work():
    x, y = blobs()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 2))
    meter = WorkMeter()
    cfg = TrainConfig(epochs=3, batch_size=50, lr=0.1)
    stats = train_model(model, x, y, cfg, generator=torch.Generator().manual_seed(0),
                        device=torch.device("cpu"), meter=meter)
    acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.95
    assert stats.steps == 3 * 8
    # natural training: exactly one forward pass per example per epoch
    assert meter.epochs(len(x)) == pytest.approx(3.0)
    assert not model.training


def test_same_seed_same_model_different_seed_different_model():
    x, y = blobs()

    def fit(seed):
        torch.manual_seed(123)
        model = nn.Linear(5, 2)
        train_model(model, x, y, TrainConfig(epochs=1, batch_size=32),
                    generator=torch.Generator().manual_seed(seed), device=torch.device("cpu"))
        return model.weight.detach().clone()

    assert torch.equal(fit(1), fit(1))
    assert not torch.equal(fit(1), fit(2))


def test_soft_labels_equal_hard_labels_when_one_hot():
    logits = torch.randn(8, 3)
    y = torch.randint(0, 3, (8,))
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    assert soft_cross_entropy(logits, one_hot).item() == pytest.approx(
        soft_cross_entropy(logits, y).item(), rel=1e-6)


@pytest.mark.parametrize("schedule", ["cosine", "step", "cyclic", "constant"])
def test_schedules_stay_in_range(schedule):
    vals = [lr_factor(schedule, s, 100) for s in range(101)]
    assert all(0.0 <= v <= 1.0 for v in vals)
    if schedule == "cyclic":
        assert vals[0] == 0.0 and vals[50] == pytest.approx(1.0)
    if schedule == "cosine":
        assert vals[0] == 1.0 and vals[100] == pytest.approx(0.0, abs=1e-9)


def test_divergence_is_reported():
    x, y = blobs()
    x[0, 0] = math.inf
    with pytest.raises(FloatingPointError, match="diverged"):
        train_model(nn.Linear(5, 2), x, y, TrainConfig(epochs=1, batch_size=400),
                    generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))


def test_epoch_hook_is_not_counted_as_training_work():
    x, y = blobs()
    meter = WorkMeter()
    seen = []

    def probe(epoch, model):
        assert not model.training
        model(x)  # a validation pass: must not count
        seen.append(epoch)

    train_model(nn.Linear(5, 2), x, y, TrainConfig(epochs=2, batch_size=100),
                generator=torch.Generator().manual_seed(0), device=torch.device("cpu"),
                meter=meter, on_epoch=probe)
    assert seen == [1, 2]
    assert meter.epochs(len(x)) == pytest.approx(2.0)
