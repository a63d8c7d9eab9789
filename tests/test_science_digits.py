"""Issue 3's comparison on real data (digits, Linf 0.2): robustness needs robust training,
or a training set learned for it.

Every dataset method is scored by the harness's protocol (fresh `linear` and `mlp` models
naturally trained on the set, 300 epochs, PGD-10 on held-out test images) at equal size
(ipc 10). Natural training on the full data and the standard distillation methods stay near
zero robust accuracy at eps 0.2; adversarial training and robust dataset learning keep a
clear margin above them. Measured while writing this test (mean PGD-10 accuracy over the two
archs): erm 0.045, random 0.032, dc 0.053, dm 0.047, rdl 0.157 (linear 0.19, mlp 0.12),
pgd_at 0.40. rdl stopped after one outer step (its soft-labelled real starting set): 0.068.
AutoAttack, measured beside (not asserted; too slow here): rdl 0.13 / 0.055, erm 0.025 / 0.0,
dm 0.02 / 0.005 (linear / mlp).
"""

from __future__ import annotations

import pytest

from harness.config import build_run_spec
from harness.evaluate import run_trial

COMMON = {
    "dataset": {"name": "digits"},
    "threat": {"steps": 10},
    "train": {"epochs": 10, "lr": 0.05},
    "eval": {"archs": ["linear", "mlp"], "models_per_arch": 1, "epochs": 300, "max_test": 300, "max_val": 100},
}

IPC = 10
METHODS = {
    "erm": {},
    "pgd_at": {"steps": 5},
    "random": {"ipc": IPC},
    "dc": {"ipc": IPC, "iterations": 40, "batch_real": 64, "arch": "mlp"},
    "dm": {"ipc": IPC, "iterations": 100, "batch_real": 64, "arch": "mlp"},
    # rdl's digits defaults (exact 100-step unroll on a linear pool, soft labels), shortened
    # from 600 to 300 outer steps to keep the suite fast.
    "rdl": {"ipc": IPC, "outer_steps": 300, "probe_every": 0},
    # the same run stopped after one outer step: real images, soft labels, nothing learned
    "rdl_start": {"ipc": IPC, "outer_steps": 1, "probe_every": 0},
}


@pytest.fixture(scope="module")
def results():
    out = {}
    for name, params in METHODS.items():
        method = name.removesuffix("_start")
        spec = build_run_spec({**COMMON, "method": {"name": method, **params}})
        out[name] = run_trial(spec)
    return out


def robust_by_arch(result) -> dict[str, float]:
    return {a.arch: a.robust_acc for a in result.per_arch}


def test_adversarial_training_beats_natural_and_distilled_data_on_robustness(results):
    robust = {k: r.robust_acc for k, r in results.items()}
    baseline = max(robust["erm"], robust["dc"], robust["dm"])
    assert robust["pgd_at"] >= baseline + 0.15, robust


def test_robust_dataset_learning_beats_natural_and_distilled_data_on_robustness(results):
    robust = {k: r.robust_acc for k, r in results.items()}
    baseline = max(robust["erm"], robust["dc"], robust["dm"], robust["random"])
    assert robust["rdl"] >= baseline + 0.05, robust
    # the robustness is learned, not brought by the soft labels or the starting images
    assert robust["rdl"] >= robust["rdl_start"] + 0.05, robust
    # Learned with a linear pool, the set must also make the MLP more robust than the others do.
    per_arch = {k: robust_by_arch(r) for k, r in results.items()}
    for arch in ("linear", "mlp"):
        others = max(per_arch[k][arch] for k in ("erm", "dc", "dm", "random"))
        assert per_arch["rdl"][arch] > others, (arch, per_arch)


def test_every_method_learns_the_task(results):
    for name, r in results.items():
        assert r.clean_acc >= 0.6, (name, r.clean_acc)
