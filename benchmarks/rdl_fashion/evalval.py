"""Validation-only scoring of a learned set (issue 10 exploration): fresh models naturally
trained on it (DC protocol, 300 epochs), clean and PGD-10 accuracy on validation images."""

import time

import torch

from harness.methods import MethodContext
from harness.protocol.attacks import Threat, accuracy, robust_accuracy
from harness.protocol.autoattack import autoattack
from harness.protocol.train import TrainConfig, WorkMeter, train_model


def score_val(data, x, y, archs, eps=0.1, n_val=500, width=32, seed=7, n_aa=200, augment=None):
    xv, yv = data.x_val[:n_val], data.y_val[:n_val]
    out = {}
    for arch in archs:
        settings = {"width": width} if arch == "convnet" else {}
        ctx = MethodContext(
            data=data,
            threat=Threat("linf", eps),
            train=TrainConfig(),
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(seed),
            seed=seed,
            archs=[arch],
            meter=WorkMeter(),
            arch_settings={arch: settings},
        )
        model = ctx.build(arch, seed=seed, metered=False)
        cfg = TrainConfig(
            epochs=300,
            batch_size=min(256, len(x)),
            optimizer="sgd",
            lr=0.01,
            momentum=0.9,
            weight_decay=5e-4,
            schedule="halfway",
        )
        t = time.time()
        train_model(
            model,
            x,
            y,
            cfg,
            generator=torch.Generator().manual_seed(seed),
            device=torch.device("cpu"),
            augment=augment,
        )
        model.eval()
        attack = Threat("linf", eps, steps=10).attack(
            bounds=data.bounds, generator=torch.Generator().manual_seed(0)
        )
        out[arch] = {
            "val_clean": round(accuracy(model, xv, yv), 3),
            "val_pgd10": round(robust_accuracy(model, xv, yv, attack), 3),
            "train_s": round(time.time() - t, 1),
        }
        if n_aa:  # AutoAttack (fast version) on the first n_aa validation images
            out[arch]["val_aa_fast"] = round(
                autoattack(
                    model,
                    xv[:n_aa],
                    yv[:n_aa],
                    norm="linf",
                    eps=eps,
                    num_classes=data.num_classes,
                    version="fast",
                    bounds=data.bounds,
                ),
                3,
            )
    return out
