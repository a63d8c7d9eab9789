"""`--estimate`: the work a calibration predicts is the work the trial then does (work is
counted in examples through the network, so it can be checked exactly; wall time is this
machine's and only printed)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.estimate.cost import estimate_variant
from harness.protocol.evaluate import load_data, run_trial
from harness.spec.plan import make_plan, resolve_trial
from harness.spec.resolve import resolve_spec
from harness.spec.schema import build_sweep_spec

COMMON = {
    "name": "cost",
    "dataset": {"name": "digits", "subset": 20},
    "threat": {"steps": 3, "autoattack": "off"},
    "train": {"epochs": 3},
    "eval": {
        "archs": ["mlp", "linear"],
        "models_per_arch": 2,
        "epochs": 5,
        "max_test": 50,
        "max_val": 50,
    },
}
METHODS = {
    "pgd_at": {"space": {"steps": 3}},
    # fixed unroll length, no probes: every outer step costs the same work
    "rdl": {
        "space": {"ipc": 2, "outer_steps": 8, "unroll_min": 4, "unroll_max": 4, "probe_every": 0}
    },
    # evaluated with DSA and eval.epochs unset: the augmented budget (1000 epochs at most)
    "dm": {"space": {"ipc": 1, "iterations": 2, "batch_real": 8, "eval.epochs": None}},
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_estimated_work_is_the_work_the_trial_does(method):
    spec = build_sweep_spec({**COMMON, "methods": {method: METHODS[method]}})
    (variant,) = make_plan(spec)
    est = estimate_variant(variant)
    assert est.note == ""
    result = run_trial(resolve_trial(variant, {}))
    trained = sum(m.train_work_epochs for m in result.models) * est.n_train_full
    assert est.train_examples == pytest.approx(trained, rel=1e-6)
    assert est.learn_examples == pytest.approx(
        result.learn_work_epochs * est.n_train_full, rel=1e-6
    )
    if method == "rdl":
        assert est.learn_examples > 0 and est.learn_seconds > 0


def test_a_spec_whose_data_is_elsewhere_is_still_valid(tmp_path):
    spec = tmp_path / "c.yaml"
    spec.write_text(
        "name: c\ndataset: {name: cifar10, root: " + str(tmp_path / "none") + "}\n"
        "methods: {erm: {}}\n"
    )
    res = CliRunner().invoke(main, ["validate", str(spec), "--estimate"])
    assert res.exit_code == 0, res.output
    assert "no estimate: the data is not here" in res.output and "valid" in res.output


def test_variants_of_one_dataset_load_it_once_and_a_missing_one_is_tried_once(
    tmp_path, monkeypatch
):
    import harness.protocol.evaluate as evaluate
    from harness.estimate.cost import estimate_plan

    calls = []
    real = evaluate.load_data
    monkeypatch.setattr(evaluate, "load_data", lambda ds: calls.append(ds.name) or real(ds))
    methods = {"erm": {}, "pgd_at": {"space": {"steps": 2}}}
    here = build_sweep_spec({**COMMON, "methods": methods})
    assert [e.note for e in estimate_plan(make_plan(here))] == ["", ""] and calls == ["digits"]
    calls.clear()
    away = build_sweep_spec(
        {**COMMON, "dataset": {"name": "cifar10", "root": str(tmp_path)}, "methods": methods}
    )
    notes = [e.note for e in estimate_plan(make_plan(away))]
    assert calls == ["cifar10"] and all(
        n.startswith("no estimate: the data is not here") for n in notes
    )


def test_the_last_dataset_is_freed_before_another_loads():
    """A calibration's context holds its data in a reference cycle (its log callback); the
    cache must collect it, or two large splits are held at once."""
    import gc
    import weakref

    from harness.estimate.cost import LastDataset
    from harness.spec.schema import DatasetSpec

    load = LastDataset()
    first = load(DatasetSpec(name="digits", subset=5))
    cycle = {"data": first}
    cycle["self"] = cycle  # kept alive only by the cycle once the names below are gone
    alive = weakref.ref(first)
    del first, cycle
    gc.disable()  # no automatic collection in between: the cache's must do it
    try:
        load(DatasetSpec(name="synthetic-robust", n_train=50, n_test=20))
        assert alive() is None
    finally:
        gc.enable()


def test_validate_prints_the_estimate_per_variant_and_in_total(tmp_path):
    spec = tmp_path / "c.yaml"
    spec.write_text(
        "name: c\ndataset: {name: digits, subset: 10}\nthreat: {steps: 2, "
        "autoattack: fast}\ntrain: {epochs: 2}\neval: {archs: [mlp], max_test: 20, "
        "max_val: 20}\ntrials: 3\nmethods: {erm: {space: {train.lr: {uniform: "
        "[0.01, 0.1]}}}}\n"
    )
    res = CliRunner().invoke(main, ["validate", str(spec), "--estimate"])
    assert res.exit_code == 0, res.output
    assert "cost estimate on this machine" in res.output
    assert "digits  erm: per trial" in res.output and "x 3 trials" in res.output
    assert "total:" in res.output and "peak memory" in res.output


PEAK_PROBE = """
import json, torch
from harness.estimate.cost import PeakMemory
before = torch.ones(64 * 2**20 // 4)  # held before the block: not counted
with PeakMemory(torch.device("cpu")) as small:
    a = torch.ones(16 * 2**20 // 4)  # 16 MB
    del a
with PeakMemory(torch.device("cpu")) as big:
    b = torch.ones(256 * 2**20 // 4)  # 256 MB, freed before the block ends
    del b
print(json.dumps([small.peak, big.peak]))
"""


def test_peak_memory_counts_what_the_block_held_at_most():
    """In a fresh process: a long-lived one may hold freed memory that a new tensor reuses
    without growing (a CPU peak is a lower bound there; the README says so)."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    small, big = json.loads(out.stdout.strip().splitlines()[-1])
    if big is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert 200 * 2**20 <= big <= 400 * 2**20
    assert small < 100 * 2**20


def test_a_spec_without_caps_on_scored_images_is_estimated(tmp_path):
    """eval.max_test unset (score every test image, as the GPU specs do) once crashed the
    calibration (min of an int and None)."""
    spec = build_sweep_spec(
        {
            **COMMON,
            "eval": {**COMMON["eval"], "max_test": None, "max_val": None},
            "methods": {"erm": {}},
        }
    )
    (variant,) = make_plan(spec)
    est = estimate_variant(variant)
    assert est.attack_examples > 0 and est.note == ""


# Count-only estimates (`--assume-tflops`): every network is built as a small stand-in, so
# the count must not depend on the network. Each method against the full calibration, with a
# ConvNet (width and depth shrunk) and an MLP (hidden width and depth shrunk) scored.
COUNTED = {
    **METHODS,
    "dc": {"space": {"ipc": 2, "iterations": 2, "batch_real": 8, "dsa": True}},
    "rdl_gm": {"space": {"ipc": 1, "iterations": 2}},
    # its robust model trains 3 epochs of several batches, and it matches 20 targets in batches
    # of 6, 6, 6 and 2: the count-only shortcuts of train_model and of the matching
    "robust_features": {
        "space": {
            "at_epochs": 3,
            "train.batch_size": 16,
            "match_steps": 2,
            "n_per_class": 2,
            "batch_size": 6,
        }
    },
    "trades": {"space": {"steps": 2}},
}


@pytest.mark.parametrize("method", sorted(COUNTED))
def test_counted_work_is_the_calibrated_work(method):
    from harness.estimate.cost import PASS_FLOPS, forward_flops

    spec = build_sweep_spec(
        {
            **COMMON,
            "eval": {**COMMON["eval"], "archs": ["convnet", "mlp"]},
            "threat": {"steps": 3, "autoattack": "fast"},
            "methods": {method: COUNTED[method]},
        }
    )
    (variant,) = make_plan(spec)
    full, counted = estimate_variant(variant), estimate_variant(variant, count_only=True)
    assert counted.counted_only and counted.peak_bytes is None and counted.note == full.note
    for field in (
        "learn_examples",
        "train_examples",
        "attack_examples",
        "learn_flops",
        "train_flops",
        "attack_flops",
        "attack_flops_low",
    ):
        assert getattr(counted, field) == pytest.approx(getattr(full, field), rel=1e-9), field
    assert counted.train_flops > 0 and counted.attack_flops > counted.attack_flops_low > 0
    if method in ("dc", "dm", "rdl", "rdl_gm", "robust_features"):
        assert counted.learn_flops > 0
    if method == "dc":  # it learns on the first evaluation arch, the ConvNet
        data = load_data(resolve_spec(resolve_trial(variant, {})).dataset)
        assert counted.learn_flops == pytest.approx(
            counted.learn_examples * PASS_FLOPS * forward_flops("convnet", data, {})
        )


def test_dm_real_batches_cost_one_forward():
    """DM embeds its real batches with autograd off: one forward each, while its synthetic
    examples take the forward and the backward (3). Two iterations of 10 classes, 8 real
    and 1 synthetic example per class, on a ConvNet."""
    from harness.estimate.cost import PASS_FLOPS, forward_flops

    spec = build_sweep_spec(
        {
            **COMMON,
            "eval": {**COMMON["eval"], "archs": ["convnet"]},
            "methods": {"dm": {"space": {"ipc": 1, "iterations": 2, "batch_real": 8}}},
        }
    )
    (variant,) = make_plan(spec)
    est = estimate_variant(variant, count_only=True)
    data = load_data(resolve_spec(resolve_trial(variant, {})).dataset)
    per_iteration = 10 * 8 * 1 + 10 * 1 * PASS_FLOPS
    assert est.learn_flops == pytest.approx(2 * per_iteration * forward_flops("convnet", data, {}))


def _layer_flops(net, x):
    """Two FLOPs per multiply-add of every convolution and dense layer, from their shapes."""
    import torch

    total = []

    def conv(m, args, out):
        k = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
        total.append(2 * out.numel() * k)

    def dense(m, args, out):
        total.append(2 * out.numel() * m.in_features)

    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, torch.nn.Linear):
            m.register_forward_hook(dense)
    with torch.no_grad():
        net(x)
    return sum(total)


@pytest.mark.parametrize(
    "arch,settings",
    [
        ("mlp", {}),
        ("convnet", {"width": 16, "depth": 2}),
        ("lenet", {}),
        ("resnet18", {"width": 8}),
    ],
)
def test_forward_flops_are_two_per_multiply_add(arch, settings):
    import torch

    from harness.estimate.cost import forward_flops
    from harness.protocol.models import build_model

    (variant,) = make_plan(build_sweep_spec({**COMMON, "methods": {"erm": {}}}))
    data = load_data(resolve_spec(resolve_trial(variant, {})).dataset)
    if arch == "lenet":  # 8x8 digits are too small for LeNet's two 5x5 convolutions
        data = type("Shape", (), {"input_shape": (1, 28, 28), "num_classes": 10})()
    net = build_model(arch, tuple(data.input_shape), data.num_classes, **settings).eval()
    expected = _layer_flops(net, torch.zeros(1, *data.input_shape))
    assert expected > 0 and forward_flops(arch, data, settings) == expected


def test_assumed_rate_gives_device_time(tmp_path):
    spec = tmp_path / "c.yaml"
    spec.write_text(
        "name: c\ndataset: {name: digits, subset: 10}\nthreat: {steps: 2, "
        "autoattack: off}\ntrain: {epochs: 2}\neval: {archs: [mlp], max_test: 20, "
        "max_val: 20}\ntrials: 3\nmethods: {erm: {space: {train.lr: {uniform: "
        "[0.01, 0.1]}}}}\n"
    )
    res = CliRunner().invoke(main, ["validate", str(spec), "--assume-tflops", "1e-6"])
    assert res.exit_code == 0, res.output
    assert "assumed sustained 1e-06 TFLOP/s" in res.output
    per_trial = [line for line in res.output.splitlines() if "digits  erm: per trial" in line]
    assert len(per_trial) == 1 and "of device time; x 3 trials" in per_trial[0]
    assert "total:" in res.output and "peak memory" not in res.output
    bad = CliRunner().invoke(main, ["validate", str(spec), "--assume-tflops", "-3"])
    assert bad.exit_code == 2 and "--assume-tflops" in bad.output


def test_a_count_is_shared_by_threats_that_differ_only_in_radius(tmp_path, monkeypatch):
    import harness.estimate.cost as estimate

    calls = []
    real = estimate.estimate_variant
    monkeypatch.setattr(
        estimate, "estimate_variant", lambda v, **kw: calls.append(v.threat) or real(v, **kw)
    )
    spec = tmp_path / "t.yaml"
    spec.write_text(
        "name: t\ndataset: {name: digits, subset: 10}\ntrain: {epochs: 2}\n"
        "threat: [{eps: 0.1, steps: 2, autoattack: off}, {eps: 0.2, steps: 2, "
        "autoattack: off}, {eps: 0.3, steps: 3, autoattack: off}]\n"
        "eval: {archs: [mlp], max_test: 20, max_val: 20}\n"
        "methods: {pgd_at: {space: {steps: 2}}}\n"
    )
    res = CliRunner().invoke(main, ["validate", str(spec), "--assume-tflops", "1"])
    assert res.exit_code == 0, res.output
    assert calls == ["linf-0.1", "linf-0.3"]
    per = {
        line.split()[1]: line.split("per trial ")[1].split(" (")[0]
        for line in res.output.splitlines()
        if "pgd_at: per trial" in line
    }
    assert per["linf-0.1"] == per["linf-0.2"] != per["linf-0.3"]


@pytest.mark.parametrize("version,eps", [("fast", 0.5), ("standard", 0.001)])
def test_autoattack_passes_meet_the_estimated_bounds(version, eps):
    """AutoAttack's attack steps per correctly classified image (a forward and a backward
    each; forward-only queries count half): near the estimate's lower bound when every image
    falls to APGD-CE (a large radius), near its upper bound when every image survives every
    attack (a tiny one). Ten classes, so the targeted attacks aim at all nine others."""
    import torch

    from harness.estimate.cost import AA_PASSES, AA_PASSES_LOW
    from harness.protocol.autoattack import robust_mask
    from harness.protocol.models import build_model
    from harness.protocol.train import input_layer

    torch.manual_seed(0)
    net = build_model("linear", (16,), 10).eval()
    with torch.no_grad():  # logits that vary across the box, so a large radius breaks them
        for p in net.parameters():
            p.mul_(20)
    x = torch.rand(32, 16)
    y = net(x).argmax(1)  # every image correctly classified
    passes = []
    layer = input_layer(net)
    layer.register_forward_hook(lambda m, args, out: passes.append(args[0].shape[0]))
    layer.register_full_backward_hook(lambda m, gin, gout: passes.append(gout[0].shape[0]))
    robust = robust_mask(net, x, y, norm="linf", eps=eps, num_classes=10, version=version)
    per_image = sum(passes) / 2 / len(x)
    if version == "fast":
        assert robust.sum() == 0
        assert AA_PASSES_LOW[version] <= per_image <= 1.05 * AA_PASSES_LOW[version], per_image
    else:
        assert robust.all()
        assert 0.95 * AA_PASSES[version] <= per_image <= 1.05 * AA_PASSES[version], per_image
