import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessInputError
from harness.protocol.train import (
    TrainConfig,
    WorkMeter,
    crop_padding,
    lr_factor,
    natural_loss,
    random_crop,
    random_flip,
    soft_cross_entropy,
    train_model,
)


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
    stats = train_model(
        model,
        x,
        y,
        cfg,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        meter=meter,
    )
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
        train_model(
            model,
            x,
            y,
            TrainConfig(epochs=1, batch_size=32),
            generator=torch.Generator().manual_seed(seed),
            device=torch.device("cpu"),
        )
        return model.weight.detach().clone()

    assert torch.equal(fit(1), fit(1))
    assert not torch.equal(fit(1), fit(2))


def test_soft_labels_equal_hard_labels_when_one_hot():
    logits = torch.randn(8, 3)
    y = torch.randint(0, 3, (8,))
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    assert soft_cross_entropy(logits, one_hot).item() == pytest.approx(
        soft_cross_entropy(logits, y).item(), rel=1e-6
    )


@pytest.mark.parametrize("schedule", ["cosine", "step", "halfway", "cyclic", "constant"])
def test_schedules_stay_in_range(schedule):
    vals = [lr_factor(schedule, s, 100) for s in range(101)]
    assert all(0.0 <= v <= 1.0 for v in vals)
    if schedule == "cyclic":
        assert vals[0] == 0.0 and vals[50] == pytest.approx(1.0)
    if schedule == "cosine":
        assert vals[0] == 1.0 and vals[100] == pytest.approx(0.0, abs=1e-9)
    if schedule == "halfway":  # DC's evaluation schedule: one x0.1 step at half the run
        assert vals[49] == 1.0 and vals[50] == vals[100] == pytest.approx(0.1)


def test_divergence_is_reported():
    x, y = blobs()
    x[0, 0] = math.inf
    with pytest.raises(FloatingPointError, match="diverged"):
        train_model(
            nn.Linear(5, 2),
            x,
            y,
            TrainConfig(epochs=1, batch_size=400),
            generator=torch.Generator().manual_seed(0),
            device=torch.device("cpu"),
        )


def test_epoch_hook_is_not_counted_as_training_work():
    x, y = blobs()
    meter = WorkMeter()
    seen = []

    def probe(epoch, model):
        assert not model.training
        model(x)  # a validation pass: must not count
        seen.append(epoch)

    train_model(
        nn.Linear(5, 2),
        x,
        y,
        TrainConfig(epochs=2, batch_size=100),
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        meter=meter,
        on_epoch=probe,
    )
    assert seen == [1, 2]
    assert meter.epochs(len(x)) == pytest.approx(2.0)


# ------------------------------------------------------------------- augmentation


def images(n=64, seed=0, shape=(3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.randint(0, 2, (n,), generator=g)


def seen_batches(augment, seed, epochs=2):
    """The batches `loss_step` receives while training a tiny model on images."""
    x, y = images()
    batches = []

    def record(model, xb, yb):
        batches.append(xb.clone())
        return natural_loss(model, xb, yb)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    train_model(
        model,
        x,
        y,
        TrainConfig(epochs=epochs, batch_size=16, augment=augment),
        generator=torch.Generator().manual_seed(seed),
        device=torch.device("cpu"),
        loss_step=record,
    )
    return x, batches


@pytest.mark.parametrize("augment", ["crop", "crop_flip"])
def test_augmentation_changes_batches_and_is_reproducible_from_the_seed(augment):
    _, plain = seen_batches("none", seed=0)
    _, aug = seen_batches(augment, seed=0)
    _, again = seen_batches(augment, seed=0)
    _, other = seen_batches(augment, seed=1)
    # The first batch's examples are the same (the shuffle is drawn before any augmentation).
    assert aug[0].shape == plain[0].shape and not torch.equal(aug[0], plain[0])
    assert all(torch.equal(a, b) for a, b in zip(aug, again))
    assert not torch.equal(aug[0], other[0])


def test_crop_is_a_window_of_the_zero_padded_image_and_flip_mirrors():
    x, _ = images(n=32)
    pad = crop_padding(8, 8)
    assert pad == 1 and crop_padding(32, 32) == 4 and crop_padding(64, 64) == 4
    padded = F.pad(x, (pad,) * 4)
    out = random_crop(x, torch.Generator().manual_seed(0))
    windows = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    found = [
        [dy, dx]
        for i in range(len(x))
        for dy, dx in windows
        if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
    ]
    assert len(found) >= len(x)  # every image is one of the windows
    assert len({tuple(f) for f in found}) > 1  # shifts are drawn per image
    flipped = random_flip(x, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(flipped[i], x[i].flip(-1)) for i in range(len(x))]
    kept = [torch.equal(flipped[i], x[i]) for i in range(len(x))]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


@pytest.mark.parametrize("augment", ["crop", "crop_flip"])
def test_augmentation_refuses_flat_inputs(augment):
    x, y = blobs()
    with pytest.raises(HarnessInputError, match=r"train\.augment.*feature vectors"):
        train_model(
            nn.Linear(5, 2),
            x,
            y,
            TrainConfig(epochs=1, augment=augment),
            generator=torch.Generator().manual_seed(0),
            device=torch.device("cpu"),
        )


def test_a_callers_augmentation_is_applied_and_cannot_be_doubled():
    x, y = images()
    calls = []

    def shift(xb, gen):
        calls.append(xb.shape[0])
        return xb + 1.0

    train_model(
        nn.Sequential(nn.Flatten(), nn.Linear(192, 2)),
        x,
        y,
        TrainConfig(epochs=1, batch_size=16),
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        augment=shift,
    )
    assert calls == [16] * 4
    with pytest.raises(ValueError, match="two augmentations"):
        train_model(
            nn.Linear(5, 2),
            x,
            y,
            TrainConfig(epochs=1, augment="crop"),
            generator=torch.Generator().manual_seed(0),
            device=torch.device("cpu"),
            augment=shift,
        )


# ------------------------------------------------------------------ early stopping


def test_early_stopping_restores_the_best_validation_epoch():
    """Validation accuracy peaks at epoch 2 and then falls: epoch 2's weights come back."""
    x, y = blobs()
    xv, yv = blobs(n=200, seed=1)
    weights, scores = {}, {}

    def select(epoch, model):
        assert not model.training
        weights[epoch] = model.weight.detach().clone()
        if epoch == 3:  # wreck the model in the last epoch: its validation score drops
            with torch.no_grad():
                model.weight.neg_()
        scores[epoch] = (model(xv).argmax(1) == yv).float().mean().item()
        return scores[epoch]

    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    stats = train_model(
        model,
        x,
        y,
        TrainConfig(epochs=3, batch_size=50, lr=0.1, schedule="constant"),
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        select=select,
    )
    assert scores[3] < max(scores[1], scores[2])
    best = max((1, 2), key=lambda e: (scores[e], e))
    assert stats.kept_epoch == best and stats.kept_score == scores[best]
    assert torch.equal(model.weight, weights[best])
    assert (model(xv).argmax(1) == yv).float().mean().item() == pytest.approx(scores[best])


def test_early_stopping_breaks_ties_towards_the_later_epoch():
    x, y = blobs()
    stats = train_model(
        nn.Linear(5, 2),
        x,
        y,
        TrainConfig(epochs=3, batch_size=100),
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        select=lambda epoch, model: 0.0,
    )
    assert stats.kept_epoch == 3
    plain = train_model(
        nn.Linear(5, 2),
        x,
        y,
        TrainConfig(epochs=2, batch_size=100),
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
    )
    assert plain.kept_epoch == 2 and plain.kept_score is None
