"""The harness from Python: scripts and notebooks get what `harness run` gets, typed.

    from harness import api

    result = api.run("digits", "pgd_at", smoke=True)            # one trial -> TrialResult
    print(result.clean_acc, result.autoattack_acc)

    x, y = my_distilled_set()                                    # made elsewhere
    scored = api.score_dataset(x, y, dataset="digits", archs=["mlp"])

    scores = api.score_model(my_model, dataset="digits")        # a trained nn.Module

    result = api.run_spec("my_trial.yaml", smoke=True)          # a whole RunSpec (or a dict)
    state = api.load_weights(run_id, "convnet", "sqlite:///mlflow.db")  # a sweep trial's model

Everything runs under the harness's evaluation protocol (`harness.protocol.evaluate`): a dataset is
scored by naturally training fresh models on it and attacking them on the held-out test split;
a model is attacked as it is. Spec sections (`threat`, `eval`, `train`, `dataset` settings)
are the YAML spec's keys, as dicts; unknown keys are refused with `HarnessInputError`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessInputError
from harness.methods import DatasetMethod, LearnedDataset, MethodContext
from harness.protocol.evaluate import (
    resolve_threat,
    run_trial,
)
from harness.protocol.evaluate import (
    score_model as _score_model,
)
from harness.results.record import LEARNED_ARTIFACT, model_artifact
from harness.results.scores import TrialResult
from harness.spec.resolve import resolve_spec, smoke_assignments
from harness.spec.schema import RunSpec, apply_overrides, build_run_spec, load_yaml

EXTERNAL = "external"  # the method name a scored outside dataset is recorded under


def build_spec(
    dataset: str,
    method: str,
    *,
    seed: int = 0,
    smoke: bool = False,
    settings: dict[str, Any] | None = None,
    sections: dict[str, Any],
) -> RunSpec:
    """A validated RunSpec from keyword arguments (the same tree `harness run` builds)."""
    data = sections.pop("dataset", {})
    tree: dict[str, Any] = {
        "dataset": {"name": dataset, **data},
        "method": {"name": method, **(settings or {})},
        "seed": seed,
    }
    for key, value in sections.items():
        tree[key] = copy.deepcopy(value)
    return build_run_spec(with_smoke(tree) if smoke else tree)


def with_smoke(tree: dict[str, Any]) -> dict[str, Any]:
    """`tree` under --smoke's budgets (as `harness run --smoke`); architectures it names are
    kept."""
    dataset, method = tree["dataset"]["name"], tree["method"]["name"]
    pre = smoke_assignments(dataset, method if method != EXTERNAL else "random")
    pre = [a for a in pre if not a.startswith("method.")] if method == EXTERNAL else pre
    if "archs" in (tree.get("eval") or {}):
        pre = [a for a in pre if not a.startswith("eval.archs=")]
    return apply_overrides(tree, pre)


def run(
    dataset: str,
    method: str,
    *,
    seed: int = 0,
    smoke: bool = False,
    settings: dict[str, Any] | None = None,
    **sections: Any,
) -> TrialResult:
    """One trial, as `harness run`: `settings` are the method's own (e.g. {"ipc": 10}),
    `sections` the spec's (threat={...}, eval={...}, train={...}, dataset={...})."""
    return run_trial(
        build_spec(dataset, method, seed=seed, smoke=smoke, settings=settings, sections=sections),
        smoke=smoke,
    )


def run_spec(spec: RunSpec | dict[str, Any] | str | Path, *, smoke: bool = False) -> TrialResult:
    """One trial from a whole spec: a `RunSpec`, its tree as a dict (the keys `harness run`
    records in spec.yaml: dataset, method, threat, train, eval, seed, device), or the path of
    a YAML file holding that tree (read with the harness's safe spec loader)."""
    if isinstance(spec, (str, Path)):
        spec = load_yaml(spec)
    if isinstance(spec, dict):
        spec = build_run_spec(spec)
    if not isinstance(spec, RunSpec):
        raise HarnessInputError(
            f"a run spec is a RunSpec, a dict or a YAML file's path, not {type(spec).__name__}.",
            field="spec",
        )
    if smoke:
        spec = build_run_spec(with_smoke(spec.model_dump(mode="json", exclude_unset=True)))
    return run_trial(spec, smoke=smoke)


class GivenDataset(DatasetMethod):
    """A labelled set made outside the harness, scored as if a method had learned it.

    Labels are class ids (N,) or class probabilities (N, C) for soft labels. The set must
    fit the dataset it claims to stand for: the same input shape, labels in range, and
    inputs inside the dataset's bounds (normalisation stays inside the models)."""

    name = EXTERNAL

    def __init__(self, x: torch.Tensor, y: torch.Tensor, info: dict[str, Any] | None = None):
        super().__init__()
        self.x, self.y, self.info = x, y, dict(info or {})

    def learn(self, ctx: MethodContext) -> LearnedDataset:
        check_set(self.x, self.y, ctx.data)
        return LearnedDataset(self.x.float(), self.y, info={"source": EXTERNAL, **self.info})


def check_set(x: torch.Tensor, y: torch.Tensor, data) -> None:
    where = f"the dataset given for {data.name!r}"
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise HarnessInputError(f"{where} must be tensors x and y.", field="x")
    if tuple(x.shape[1:]) != tuple(data.input_shape) or len(x) == 0:
        raise HarnessInputError(
            f"{where} has inputs of shape {tuple(x.shape)}; {data.name} needs (N, "
            f"{', '.join(map(str, data.input_shape))}) with N >= 1.",
            field="x",
        )
    if len(y) != len(x):
        raise HarnessInputError(f"{where} has {len(x)} inputs but {len(y)} labels.", field="y")
    if y.dim() == 1:
        if y.dtype.is_floating_point or y.min() < 0 or y.max() >= data.num_classes:
            raise HarnessInputError(
                f"{where} needs integer class ids in 0..{data.num_classes - 1}.", field="y"
            )
    elif y.dim() != 2 or y.shape[1] != data.num_classes:
        raise HarnessInputError(
            f"{where} has labels of shape {tuple(y.shape)}; use class ids (N,) or class "
            f"probabilities (N, {data.num_classes}).",
            field="y",
        )
    if not torch.isfinite(x).all():
        raise HarnessInputError(f"{where} has non-finite inputs.", field="x")
    if data.bounds is not None and (x.min() < data.bounds[0] or x.max() > data.bounds[1]):
        raise HarnessInputError(
            f"{where} has inputs in [{float(x.min()):.3g}, {float(x.max()):.3g}], outside "
            f"{data.name}'s bounds {tuple(data.bounds)}; give unnormalised inputs.",
            field="x",
        )


def score_dataset(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dataset: str,
    seed: int = 0,
    smoke: bool = False,
    archs: list[str] | None = None,
    info: dict[str, Any] | None = None,
    **sections: Any,
) -> TrialResult:
    """Score a labelled set made elsewhere (a DC-Bench or GUARD set, a hand-built one) by the
    harness's protocol: fresh models of `archs` naturally trained on it, then attacked."""
    if archs is not None:
        sections["eval"] = {**sections.get("eval", {}), "archs": list(archs)}
    spec = build_spec(dataset, EXTERNAL, seed=seed, smoke=smoke, sections=sections)
    return run_trial(spec, smoke=smoke, method=GivenDataset(x, y, info))


def load_set(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(x, y, metadata) from a `.pt` file holding a dict with `x`, `y` and optionally `soft`
    (class probabilities, used as the labels) and `meta`; loaded with weights_only=True."""
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise HarnessInputError(f"{path} does not exist.", field="PATH") from None
    except Exception as exc:  # noqa: BLE001 (any unreadable file is the user's input)
        raise HarnessInputError(
            f"{path} is not a tensor file torch can load safely ({type(exc).__name__}); save "
            "a dict with torch.save({'x': inputs, 'y': labels}, path).",
            field="PATH",
        ) from None
    if not isinstance(blob, dict) or not {"x", "y"} <= set(blob):
        raise HarnessInputError(f"{path} must hold a dict with keys 'x' and 'y'.", field="PATH")
    y = blob["soft"] if blob.get("soft") is not None else blob["y"]
    return blob["x"], y, dict(blob.get("meta") or {})


def score_model(
    model: nn.Module, *, dataset: str, seed: int = 0, device: str = "cpu", **sections: Any
) -> dict[str, Any]:
    """Clean, PGD and AutoAttack accuracy (and the masking flags) of a trained model on the
    dataset's test split, and the same on validation, as the harness scores its own models.
    The model takes raw inputs in the dataset's bounds (normalisation inside)."""
    from harness.datasets import load_dataset

    spec = resolve_spec(
        build_spec(dataset, EXTERNAL, seed=seed, sections={**sections, "device": device})
    )
    ds = spec.dataset
    data = load_dataset(
        ds.name,
        root=ds.root,
        download=ds.download,
        subset=ds.subset,
        val_fraction=ds.val_fraction,
        split_seed=ds.split_seed,
        params=ds.params(),
    )
    torch_device = torch.device(device)
    model = model.to(torch_device).eval()
    return _score_model(
        model, data, resolve_threat(spec, data), spec, seed=seed, device=torch_device
    )


def load_learned(run_id: str, tracking_uri: str | None = None) -> LearnedDataset:
    """The set a sweep trial learned, from its MLflow artifact (`LEARNED_ARTIFACT`), with its
    metadata (`harness.results.record.learned_meta`) as `info`."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = _download(
            run_id,
            LEARNED_ARTIFACT,
            tracking_uri,
            tmp,
            what="learned set",
            hint="only dataset-producing methods save one",
        )
        x, y, meta = load_set(local)
    return LearnedDataset(x, y, info=meta)


def load_weights(run_id: str, arch: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The state dict of architecture `arch`'s first model in a trial run (its artifact
    `model/<arch>.pt`), loaded with torch.load(weights_only=True). It fits
    `harness.protocol.models.build_model(arch, data.input_shape, data.num_classes, mean=..., std=...)`
    for the trial's dataset `data`, built with `mean, std = data.channel_stats()` (the state
    holds the normalisation too)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = _download(
            run_id,
            model_artifact(arch),
            tracking_uri,
            tmp,
            what=f"weights for {arch!r}",
            hint="a trial keeps the first model of each evaluation architecture",
        )
        return torch.load(local, map_location="cpu", weights_only=True)


def _download(
    run_id: str, artifact: str, tracking_uri: str | None, folder: str, *, what: str, hint: str
) -> str:
    from harness.tracking.store import connect

    client = connect(tracking_uri)
    try:
        return client.download_artifacts(run_id, artifact, folder)
    except Exception as exc:  # noqa: BLE001 (an unknown run or a run without the artifact)
        raise HarnessInputError(
            f"run {run_id!r} has no {what} ({artifact}) in this store "
            f"({type(exc).__name__}); {hint}.",
            field="run_id",
        ) from None
