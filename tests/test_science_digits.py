"""Issue 3's comparison on real data (digits, Linf 0.2): robustness needs robust training,
or a training set learned for it, measured with the ranked metric.

Every dataset method is scored by the harness's protocol (fresh `linear` and `mlp` models
naturally trained on the set, 300 epochs, AutoAttack (fast: APGD-CE + APGD-T) and PGD-10 on
300 held-out test images) at equal size (ipc 10). rdl's settings were chosen on validation
(sweeps/rdl-digits-tuning.yaml: split seed 1, seed 1); this test runs on split seed 2 and
seed 2, used for nothing else, and its margins were fixed before it was run.

Measured on its one run (2-core CPU; AutoAttack-fast / PGD-10, mean of linear and mlp):
erm 0.012 / 0.023, random 0.012 / 0.027, dc 0.017 / 0.038, dm 0.017 / 0.040,
rdl 0.075 / 0.140 (linear 0.070, mlp 0.080 under AutoAttack), rdl's starting set 0.000 / 0.025,
pgd_at 0.278 / 0.375; clean accuracy 0.885-0.955; no masking flag raised. rdl clears its
+0.05 margin over the best of erm/random/dc/dm by 0.008: a real but modest effect.
"""

from __future__ import annotations

import pytest

from harness.protocol.evaluate import run_trial
from harness.spec.schema import build_run_spec

COMMON = {
    "dataset": {"name": "digits", "split_seed": 2},
    "seed": 2,
    "threat": {"steps": 10, "autoattack": "fast"},
    "train": {"epochs": 10, "lr": 0.05},
    "eval": {
        "archs": ["linear", "mlp"],
        "models_per_arch": 1,
        "epochs": 300,
        "max_test": 300,
        "max_val": 100,
    },
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
    for name, r in out.items():  # shown with `pytest -s`: the figures the docstring quotes
        arch = "  ".join(f"{a.arch} {a.autoattack_acc:.3f}/{a.robust_acc:.3f}" for a in r.per_arch)
        print(
            f"{name:10s} clean {r.clean_acc:.3f}  AA {r.autoattack_acc:.3f}  "
            f"PGD {r.robust_acc:.3f}  ({arch})  flags {r.masking_flags}"
        )
    return out


def aa_by_arch(result) -> dict[str, float]:
    return {a.arch: a.autoattack_acc for a in result.per_arch}


def test_adversarial_training_beats_natural_and_distilled_data_on_robustness(results):
    aa = {k: r.autoattack_acc for k, r in results.items()}
    baseline = max(aa["erm"], aa["dc"], aa["dm"])
    assert aa["pgd_at"] >= baseline + 0.15, aa


def test_robust_dataset_learning_beats_natural_and_distilled_data_on_robustness(results):
    aa = {k: r.autoattack_acc for k, r in results.items()}
    baseline = max(aa["erm"], aa["dc"], aa["dm"], aa["random"])
    assert aa["rdl"] >= baseline + 0.05, aa
    # the robustness is learned, not brought by the soft labels or the starting images
    assert aa["rdl"] >= aa["rdl_start"] + 0.05, aa
    # Learned with a linear pool, the set must also make the MLP more robust than the others do.
    per_arch = {k: aa_by_arch(r) for k, r in results.items()}
    for arch in ("linear", "mlp"):
        others = max(per_arch[k][arch] for k in ("erm", "dc", "dm", "random"))
        assert per_arch["rdl"][arch] > others, (arch, per_arch)


def test_pgd_overstates_but_keeps_the_order(results):
    """AutoAttack never exceeds PGD by more than noise, and no run raises a masking flag that
    says PGD or AutoAttack failed outright."""
    for name, r in results.items():
        assert r.autoattack_acc <= r.robust_acc + 0.02, (name, r.autoattack_acc, r.robust_acc)
        assert "no_zero_at_large_eps" not in r.masking_flags, (name, r.masking_flags)


def test_every_method_learns_the_task(results):
    for name, r in results.items():
        assert r.clean_acc >= 0.6, (name, r.clean_acc)
