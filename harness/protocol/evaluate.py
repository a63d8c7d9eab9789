"""The evaluation protocol: the harness's, never the method's.

- a model-producing method is scored by its own trained models, one per architecture and seed;
- a dataset-producing method learns its dataset once, then fresh models of every evaluation
  architecture are *naturally* trained on it, several seeds each, and scored;
- scores: clean, PGD and (optionally) AutoAttack accuracy on the held-out test split; the
  objective `val_robust_acc` is PGD accuracy on the validation split carved from training data;
- cost: one-time learning cost and per-model training cost, in wall seconds and in work
  epochs (forward passes over examples / size of the full training split).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from harness.datasets import (
    DatasetSplits,
    load_dataset,
)
from harness.methods import (
    STEP_METRIC,
    DatasetMethod,
    LearnedDataset,
    Method,
    MethodContext,
    ModelMethod,
    make_method,
)
from harness.methods._augment import DSATrainAugment
from harness.protocol import masking
from harness.protocol.allocator import keep_freed_memory
from harness.protocol.attacks import Threat, accuracy, robust_accuracy
from harness.protocol.autoattack import autoattack
from harness.protocol.checkpoint import Stage, TrialCheckpoint
from harness.protocol.train import (
    ResumePoint,
    Selector,
    TrainConfig,
    WorkMeter,
    natural_loss,
    pick_device,
    train_model,
)
from harness.results.scores import ArchScore, ModelScore, TrialResult
from harness.spec.resolve import resolve_archs, resolve_spec
from harness.spec.schema import DatasetSpec, RunSpec, derived_seed

LogFn = Callable[[dict[str, float], int], None]


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def resolve_threat(spec: RunSpec, data: DatasetSplits) -> Threat:
    """The attack of a resolved spec (`resolve_spec` decided its eps)."""
    t = spec.threat
    if t.eps is None:
        raise ValueError("resolve_threat needs a resolved spec (resolve_spec decides eps)")
    return Threat(
        norm=t.norm, eps=t.eps, steps=t.steps, alpha=t.alpha, restarts=t.restarts, loss=t.loss
    )


# Epochs the reference code trains an evaluation model on a learned set (Zhao et al.'s
# DatasetCondensation repository, commit 53f63a6): 300 without augmentation; 1000 when the
# set is trained on with augmentation ("Training with data augmentation needs more epochs",
# main.py lines 111-123: DSA sets, and DC's own augmentation), and `--epoch_eval_train`
# defaults to 1000 in DM's main_DM.py (line 21), whose sets are evaluated with DSA.
EVAL_EPOCHS_PLAIN = 300
EVAL_EPOCHS_AUGMENTED = 1000


def eval_epochs(spec: RunSpec, n_learned: int, n_full: int, augmented: bool = False) -> int:
    """Downstream epochs on a learned set: the spec's `eval.epochs` when it gives them (also
    for augmented sets), else as many optimiser steps as `train.epochs` over the full
    training set, kept between train.epochs and the reference budget: 300 epochs, or 1000
    for a set that brings its own augmentation (`augmented`: DSA for dm, dc with dsa)."""
    if spec.eval.epochs is not None:
        return spec.eval.epochs
    cap = EVAL_EPOCHS_AUGMENTED if augmented else EVAL_EPOCHS_PLAIN
    matched = math.ceil(spec.train.epochs * n_full / max(1, n_learned))
    return max(spec.train.epochs, min(cap, matched))


def score_model(
    model: nn.Module,
    data: DatasetSplits,
    threat: Threat,
    spec: RunSpec,
    *,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Clean / PGD / AutoAttack accuracy on test, the same on validation (AutoAttack there
    only when asked for), and the gradient-masking checks on the test split."""
    model.eval()
    attack = threat.attack(
        bounds=data.bounds, generator=torch.Generator(device=device).manual_seed(seed)
    )

    n_test, n_val = spec.eval.max_test, spec.eval.max_val
    xt, yt = data.x_test[:n_test].to(device), data.y_test[:n_test].to(device)
    xv, yv = data.x_val[:n_val].to(device), data.y_val[:n_val].to(device)
    scores: dict[str, Any] = {
        "clean_acc": accuracy(model, xt, yt),
        "robust_acc": robust_accuracy(model, xt, yt, attack),
        "val_clean_acc": accuracy(model, xv, yv),
        "val_robust_acc": robust_accuracy(model, xv, yv, attack),
        "autoattack_acc": None,
        "val_autoattack_acc": None,
    }
    aa = dict(
        norm=threat.norm,
        eps=threat.eps,
        num_classes=data.num_classes,
        seed=seed,
        bounds=data.bounds,
    )
    if spec.threat.autoattack != "off":
        scores["autoattack_acc"] = autoattack(model, xt, yt, version=spec.threat.autoattack, **aa)
    if spec.eval.val_autoattack != "off":
        scores["val_autoattack_acc"] = autoattack(
            model, xv, yv, version=spec.eval.val_autoattack, **aa
        )
    report = masking.check(
        model,
        xt,
        yt,
        threat,
        pgd_acc=scores["robust_acc"],
        autoattack_acc=scores["autoattack_acc"],
        bounds=data.bounds,
        generator=torch.Generator(device=device).manual_seed(derived_seed(seed + 1)),
        pgd_on_x=True,  # robust_acc is PGD on exactly xt: not run twice
    )
    scores["masking_flags"] = list(report.flags)
    return scores


def downstream_config(
    spec: RunSpec, n_learned: int, n_full: int, augmented: bool = False
) -> TrainConfig:
    """Natural training on a learned set: DC's protocol (Zhao et al. 2021: SGD, momentum 0.9,
    weight decay 5e-4, lr cut x0.1 once, at half the epochs). `train.augment` is the recipe of
    model-producing methods; a learned set brings its own (`LearnedDataset.augment`), and
    `augmented` says it does (it lengthens the default budget, see `eval_epochs`)."""
    return spec.train.config(
        augment="none",
        epochs=eval_epochs(spec, n_learned, n_full, augmented),
        lr=spec.eval.lr,
        batch_size=min(spec.eval.batch_size, n_learned),
        optimizer="sgd",
        momentum=0.9,
        weight_decay=5e-4,
        schedule="halfway",
    )


PROBE_EXAMPLES = 256  # validation examples attacked by the per-epoch probe
PROBE_STEPS = 10  # PGD steps of the probe: cheap, and only compared between trials


def val_robust_probe(
    data: DatasetSplits, threat: Threat, device: torch.device, rows: slice
) -> Selector:
    """PGD accuracy (at most PROBE_STEPS steps) on the validation examples `rows`."""
    x, y = data.x_val[rows].to(device), data.y_val[rows].to(device)
    cheap = Threat(threat.norm, threat.eps, steps=min(threat.steps, PROBE_STEPS))

    def score(epoch: int, model: nn.Module) -> float:
        # the attack's random starts are drawn afresh from the epoch number: the same
        # whether or not the training was restarted in between
        gen = torch.Generator(device=device).manual_seed(epoch)
        return robust_accuracy(model, x, y, cheap.attack(bounds=data.bounds, generator=gen))

    return score


def epoch_probe(data: DatasetSplits, threat: Threat, device: torch.device, log: LogFn):
    """A per-epoch validation robust-accuracy probe (what ASHA compares trials on)."""
    score = val_robust_probe(data, threat, device, slice(None, PROBE_EXAMPLES))

    def probe(epoch: int, model: nn.Module) -> None:
        log({"val_robust_acc": score(epoch, model), "epoch": epoch}, epoch)

    return probe


def early_stop_selector(data: DatasetSplits, threat: Threat, device: torch.device) -> Selector:
    """Validation PGD-10 accuracy that picks the epoch to keep (Rice et al. 2020, arXiv
    2002.11569, stop on a held-out validation set). It attacks the *last* PROBE_EXAMPLES
    validation examples, while the objective scores the first `eval.max_val`: disjoint when
    the validation split holds more than both, so the objective does not grade the data the
    epoch was chosen on. The test split is never used."""
    return val_robust_probe(data, threat, device, slice(-PROBE_EXAMPLES, None))


ProgressFn = Callable[[str, int, int], None]  # (phase, done, total): "learning" or "models"


def run_trial(
    spec: RunSpec,
    *,
    smoke: bool = False,
    log: LogFn | None = None,
    probe_epochs: bool = False,
    method: Method | None = None,
    progress: ProgressFn | None = None,
    checkpoint: TrialCheckpoint | None = None,
    data: DatasetSplits | None = None,
) -> TrialResult:
    """Run one trial end to end: load, learn (dataset methods), train, score, aggregate.

    `probe_epochs`: while the first model of a model-producing method trains, log a cheap
    validation robust accuracy after every epoch (early stopping of weak sweep trials).
    `method`: an already built method to score instead of the spec's (`harness.api` passes a
    dataset made outside the harness this way). `progress(phase, done, total)`: told after
    each learning step (of `method.planned_steps`) and each downstream model. `checkpoint`:
    where the trial saves its progress and, after a restart, what it goes on from
    (`harness.protocol.checkpoint`; the result is the same as an uninterrupted run's). `data`: the
    spec's dataset, already loaded (a sweep's node-shared copy, `harness.sweep.shared_data`)."""
    trial = Trial.start(
        spec,
        method=method,
        data=data,
        smoke=smoke,
        log=log or (lambda metrics, step: None),
        progress=progress or (lambda phase, done, total: None),
        checkpoint=checkpoint or TrialCheckpoint(),
    )
    material = trial.training_material()
    models, weights = trial.train_and_score(material, probe_epochs=probe_epochs)
    result = summarise(
        trial.spec,
        trial.method,
        data=trial.data,
        threat=trial.threat,
        models=models,
        learned=material.learned,
        learn_seconds=material.learn_seconds,
        learn_meter=trial.ctx.meter,
        size=len(material.x),
    )
    result.weights = weights
    result.smoke = smoke
    return result


@dataclass
class Material:
    """What the downstream models train on: the learned set or the original data, with the
    recipe and per-batch loss that go with it."""

    x: torch.Tensor
    y: torch.Tensor
    cfg: TrainConfig
    loss_step: Any
    learned: LearnedDataset | None = None
    learn_seconds: float = 0.0


@dataclass
class Trial:
    """One trial's resolved pieces, decided once (`start`), and its two stages."""

    spec: RunSpec
    method: Method
    data: DatasetSplits
    threat: Threat
    archs: list[str]
    device: torch.device
    ctx: MethodContext
    log: LogFn
    progress: ProgressFn
    checkpoint: TrialCheckpoint

    @classmethod
    def start(cls, spec: RunSpec, *, method, data, smoke, log, progress, checkpoint) -> Trial:
        spec = resolve_spec(spec)
        device = pick_device(spec.device)
        if device.type == "cpu":
            keep_freed_memory()  # reuse freed CPU memory (harness.protocol.allocator)
        method = method or make_method(spec.method.name, spec.method.params())
        data = data if data is not None else load_data(spec.dataset)
        threat = resolve_threat(spec, data)
        planned = method.planned_steps()

        def learning_log(metrics: dict[str, float], step: int) -> None:
            log(metrics, step)
            if planned and STEP_METRIC in metrics:  # one per learning step
                progress("learning", min(step + 1, planned), planned)

        ctx = method_context(spec, data, threat, device, WorkMeter(), log=learning_log, smoke=smoke)
        return cls(spec, method, data, threat, ctx.archs, device, ctx, log, progress, checkpoint)

    def training_material(self) -> Material:
        """A dataset method's learned set (learned now, or as a restarted trial saved it)
        trained on naturally, or a model method's recipe on the original data."""
        if isinstance(self.method, DatasetMethod):
            learned, seconds = learn_once(self.method, self.ctx, self.checkpoint)
            cfg = downstream_config(
                self.spec,
                len(learned),
                self.data.n_train_full,
                augmented=learned.augment is not None,
            )
            return Material(
                learned.x.detach().cpu(),
                learned.y.detach().cpu(),
                cfg,
                natural_loss,
                learned,
                seconds,
            )
        assert isinstance(self.method, ModelMethod)
        return Material(
            self.data.x_train,
            self.data.y_train,
            self.method.train_config(self.ctx.train),
            self.method.loss_step(self.ctx),
        )

    def train_and_score(self, material: Material, *, probe_epochs: bool):
        """Every downstream model (`eval.models_per_arch` per arch), trained and scored, the
        ones a restarted trial had finished taken as saved; (scores, first weights per arch)."""
        done = self.checkpoint.get("models") or {"scores": [], "weights": {}}
        models = [ModelScore(**m) for m in done["scores"]]
        weights: dict[str, dict] = dict(done["weights"])
        if models:  # the method's random stream as it was after the last model finished
            self.ctx.generator.set_state(done["generator"])
        data, threat, device = self.data, self.threat, self.device
        model_method = material.learned is None
        probe = (
            epoch_probe(data, threat, device, self.log) if probe_epochs and model_method else None
        )
        early_stop = self.spec.train.early_stop and model_method  # a model-method recipe
        select = early_stop_selector(data, threat, device) if early_stop else None
        total = len(self.archs) * self.spec.eval.models_per_arch
        for arch in self.archs:
            for k in range(self.spec.eval.models_per_arch):
                seed = derived_seed(self.spec.seed * 1000 + k)
                if any(m.arch == arch and m.seed == seed for m in models):
                    continue  # trained and scored before a restart
                score, state, scores = self.one_model(
                    material, arch, k, seed, on_epoch=probe if not models else None, select=select
                )
                models.append(score)
                weights.setdefault(arch, state)
                self.checkpoint.put(
                    "models",
                    {
                        "scores": [asdict(m) for m in models],
                        "weights": weights,
                        "generator": self.ctx.generator.get_state(),
                    },
                    drop=("training",),
                )
                self.progress("models", len(models), total)
                self.log(
                    {
                        f"arch.{arch}.{key}": v
                        for key, v in scores.items()
                        if isinstance(v, (int, float))
                    },
                    len(models),
                )
        return models, weights

    def one_model(self, material: Material, arch: str, k: int, seed: int, *, on_epoch, select):
        """Train and score the k-th model of `arch`: its score, weights and raw scores."""
        meter = WorkMeter()
        model = self.ctx.build(arch, seed=seed, metered=False)
        learned = material.learned
        stats = train_model(
            model,
            material.x,
            material.y,
            material.cfg,
            device=self.device,
            generator=torch.Generator().manual_seed(seed),
            loss_step=material.loss_step,
            meter=meter,
            on_epoch=on_epoch,
            select=select,
            augment=learned.augment if learned is not None else None,
            resume=ResumePoint(self.checkpoint, f"{arch}/{k}", generators=(self.ctx.generator,)),
        )
        scores = score_model(
            model, self.data, self.threat, self.spec, seed=seed, device=self.device
        )
        score = ModelScore(
            arch=arch,
            seed=seed,
            train_seconds=stats.seconds,
            train_work_epochs=meter.epochs(self.data.n_train_full),
            kept_epoch=stats.kept_epoch,
            **scores,
        )
        state = {key: v.detach().cpu() for key, v in model.state_dict().items()}
        return score, state, scores


def method_context(
    spec: RunSpec,
    data: DatasetSplits,
    threat: Threat,
    device: torch.device,
    meter: WorkMeter,
    **extra: Any,
) -> MethodContext:
    """The context a trial hands its method for a resolved `spec`: the spec's training
    recipe, architectures and arch settings, a generator seeded by its seed; `extra` fields
    (log, smoke, arch_settings) as given."""
    return MethodContext(
        data=data,
        threat=threat,
        train=spec.train.config(),
        device=device,
        generator=torch.Generator().manual_seed(spec.seed),
        seed=spec.seed,
        archs=resolve_archs(spec),
        meter=meter,
        **{"arch_settings": spec.eval.arch_settings, **extra},
    )


def load_data(ds: DatasetSpec) -> DatasetSplits:
    """The dataset a spec's `dataset` section describes, loaded and split."""
    return load_dataset(
        ds.name,
        root=ds.root,
        download=ds.download,
        subset=ds.subset,
        val_fraction=ds.val_fraction,
        split_seed=ds.split_seed,
        params=ds.params(),
    )


def learn_once(
    method: DatasetMethod, ctx: MethodContext, checkpoint: TrialCheckpoint
) -> tuple[LearnedDataset, float]:
    """The method's learned set and its learning seconds: learned now, or the one a
    restarted trial had finished (its learning cost counted in `ctx.meter` as then)."""
    saved = checkpoint.get("learned")
    if saved is not None:
        ctx.meter.examples = saved["examples"]
        augment = DSATrainAugment(saved["dsa"]) if saved["dsa"] else None
        return LearnedDataset(saved["x"], saved["y"], saved["info"], augment=augment), saved[
            "seconds"
        ]
    ctx.resume = Stage(checkpoint, "learning")
    learned = method.learn(ctx)
    check_learned(method.name, learned)
    seconds = ctx.resume.seconds()
    dsa = learned.augment.strategy if isinstance(learned.augment, DSATrainAugment) else ""
    if learned.augment is None or dsa:  # another augmentation could not be rebuilt from a file
        checkpoint.put(
            "learned",
            {
                "x": learned.x.detach().cpu(),
                "y": learned.y.detach().cpu(),
                "info": json.loads(json.dumps(learned.info, default=str)),
                "dsa": dsa,
                "seconds": seconds,
                "examples": ctx.meter.examples,
            },
            drop=("learning",),
        )
    return learned, seconds


def check_learned(name: str, learned: LearnedDataset) -> None:
    """A learned set with NaN or infinite inputs or labels is a diverged run, not a dataset:
    trained on, it would score as a set that teaches nothing."""
    for part, values in (("inputs", learned.x), ("labels", learned.y)):
        if values.is_floating_point() and not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise FloatingPointError(
                f"method {name!r} returned a learned set whose {part} hold {bad} NaN or infinite "
                "values (its learning diverged); lower its learning rates (e.g. method.lr_img, "
                "method.outer_lr) or its number of steps"
            )


def summarise(
    spec, method, *, data, threat, models, learned, learn_seconds, learn_meter, size
) -> TrialResult:
    def avg(key: str) -> float | None:
        vals = [getattr(m, key) for m in models]
        return None if any(v is None for v in vals) else mean_std(vals)[0]

    per_arch = []
    for arch in dict.fromkeys(m.arch for m in models):
        ms = [m for m in models if m.arch == arch]
        clean = mean_std([m.clean_acc for m in ms])
        robust = mean_std([m.robust_acc for m in ms])
        aa_vals = [m.autoattack_acc for m in ms]
        aa = mean_std(aa_vals) if None not in aa_vals else (None, None)
        per_arch.append(
            ArchScore(
                arch,
                len(ms),
                clean_acc=clean[0],
                robust_acc=robust[0],
                autoattack_acc=aa[0],
                clean_acc_std=clean[1],
                robust_acc_std=robust[1],
                autoattack_acc_std=aa[1],
            )
        )
    learn_work = learn_meter.epochs(data.n_train_full)
    train_work = avg("train_work_epochs")
    return TrialResult(
        method=method.name,
        kind=method.kind,
        dataset=data.name,
        seed=spec.seed,
        threat={
            "norm": threat.norm,
            "eps": threat.eps,
            "steps": threat.steps,
            "restarts": threat.restarts,
            "loss": threat.loss,
            "autoattack": spec.threat.autoattack,
        },
        clean_acc=avg("clean_acc"),
        robust_acc=avg("robust_acc"),
        autoattack_acc=avg("autoattack_acc"),
        val_clean_acc=avg("val_clean_acc"),
        val_robust_acc=avg("val_robust_acc"),
        val_autoattack_acc=avg("val_autoattack_acc"),
        masking_flags=sorted({f for m in models for f in m.masking_flags}),
        learn_seconds=learn_seconds,
        train_seconds=avg("train_seconds"),
        learn_work_epochs=learn_work,
        train_work_epochs=train_work,
        work_epochs=learn_work + train_work,
        dataset_size=size,
        per_arch=per_arch,
        models=models,
        learned=learned,
    )
