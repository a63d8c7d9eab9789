"""Every registered method, built in or a plugin, keeps the method contract
(`harness.methods.base`): run through `--smoke` on digits, its record has the fields the CLI's
JSON and MLflow promise, its learned set or models are what its kind says, its progress
matches its planned steps, and the same seed gives the same result however PyTorch's global
random state was left. Also: the plugin API, and the old module names, keep working."""

from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch

from harness.methods import METHODS, DatasetMethod, ModelMethod
from harness.methods._plugins import load_env_plugins
from harness.protocol.evaluate import run_trial
from harness.results.record import TrialRecord
from harness.spec.resolve import smoke_assignments
from harness.spec.schema import apply_overrides, build_run_spec

# A plugin written against the documented names only (`harness.methods`), as in the README.
PLUGIN = '''
import torch
from harness.methods import DatasetMethod, LearnedDataset, MethodConfig, PerClass, register_method


@register_method("contract_plugin")
class ContractPlugin(DatasetMethod):
    """Test-only: ipc real examples per class, each nudged by one signed-gradient step of a
    network the context builds (so it has learning work and a learning step to log)."""

    class Config(MethodConfig):
        ipc: PerClass = 2

    smoke = {"ipc": 1}

    def planned_steps(self):
        return 1

    def learn(self, ctx):
        rows = [(ctx.data.y_train == c).nonzero().flatten() for c in range(ctx.data.num_classes)]
        pick = torch.cat([r[torch.randperm(r.numel(), generator=ctx.generator)[: self.cfg.ipc]]
                          for r in rows])
        x = ctx.data.x_train[pick].clone().requires_grad_(True)
        net = ctx.build(ctx.archs[0])
        loss = torch.nn.functional.cross_entropy(net(x), ctx.data.y_train[pick])
        (grad,) = torch.autograd.grad(loss, x)
        ctx.log({"outer_loss": float(loss)}, 0)
        lo, hi = ctx.data.bounds
        return LearnedDataset((x - 0.01 * grad.sign()).clamp(lo, hi).detach(), ctx.data.y_train[pick])
'''

BUILT_IN = sorted(METHODS)
NUMBERS = (
    "clean_acc",
    "robust_acc",
    "val_robust_acc",
    "learn_seconds",
    "train_seconds",
    "work_epochs",
    "learn_work_epochs",
    "train_work_epochs",
)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "contract_plugin_mod.py").write_text(PLUGIN)
    sys.path.insert(0, str(folder))
    before = dict(METHODS._items)
    try:
        load_env_plugins("contract_plugin_mod")
        yield "contract_plugin"
    finally:
        METHODS._items.clear()
        METHODS._items.update(before)
        sys.path.remove(str(folder))
        sys.modules.pop("contract_plugin_mod", None)


def smoke_trial(name: str, global_seed: int):
    tree = apply_overrides(
        {"dataset": {"name": "digits"}, "method": {"name": name}, "seed": 4},
        # AutoAttack off and fewer images scored: the contract, not the scores, is checked
        [
            *smoke_assignments("digits", name),
            "threat.autoattack=off",
            "eval.max_test=100",
            "eval.max_val=100",
        ],
    )
    logs: list[tuple[int, dict]] = []
    torch.manual_seed(global_seed)  # what the method must not depend on
    result = run_trial(build_run_spec(tree), smoke=True, log=lambda m, s: logs.append((s, m)))
    return result, logs, tree


@pytest.mark.parametrize("name", [*BUILT_IN, "contract_plugin"])
def test_every_method_keeps_the_contract(name, request):
    if name == "contract_plugin":
        request.getfixturevalue("plugin")
    cls = METHODS.get(name)
    # a config that every field defaults (`method: {name: ...}` runs), smoke keys among them
    assert set(cls.smoke) <= set(cls.Config.model_fields), set(cls.smoke) - set(
        cls.Config.model_fields
    )
    cls.Config()

    result, logs, tree = smoke_trial(name, global_seed=1)
    record = TrialRecord.from_result(result, tree)
    for key in NUMBERS:
        value = record.metrics[key]
        assert isinstance(value, float) and math.isfinite(value) and value >= 0, (key, value)
    for key in ("clean_acc", "robust_acc", "val_robust_acc"):
        assert record.metrics[key] <= 1.0, key
    assert record.method == name and record.dataset == "digits"
    assert [a.arch for a in record.per_arch] == tree["eval"]["archs"]

    if issubclass(cls, DatasetMethod):
        learned = result.learned
        assert learned is not None and len(learned) == result.dataset_size
        assert bool(torch.isfinite(learned.x).all())
        assert learned.x.min() >= 0.0 and learned.x.max() <= 1.0  # digits' bounds
        assert learned.y.dim() == 1 or learned.y.shape == (len(learned), 10)
    else:
        assert issubclass(cls, ModelMethod) and result.learned is None
        assert result.learn_work_epochs == 0 and result.train_work_epochs > 0

    # progress: one `outer_loss` per planned learning step
    planned = run_cfg_steps(name, tree)
    if planned:
        assert len([s for s, m in logs if "outer_loss" in m]) == planned, logs

    # randomness from the trial's seed only
    again, _, _ = smoke_trial(name, global_seed=2)
    assert again.clean_acc == result.clean_acc and again.robust_acc == result.robust_acc
    if result.learned is not None:
        assert torch.equal(again.learned.x, result.learned.x)


def run_cfg_steps(name: str, tree: dict) -> int:
    """The learning steps the smoke trial's resolved settings plan."""
    from harness.methods import make_method
    from harness.spec.resolve import resolve_spec

    spec = resolve_spec(build_run_spec(tree))
    return make_method(name, spec.method.params()).planned_steps()


def test_old_module_names_still_import_with_a_deprecation_warning():
    """Scripts and plugins written before the sub-packages (`from harness.train import
    natural_loss`) keep working: the old name is the moved module itself."""
    import harness.protocol.train as new

    sys.modules.pop("harness.train", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import harness.train as old
    assert old is new
    assert any(
        "harness.protocol.train" in str(w.message) and w.category is DeprecationWarning
        for w in caught
    )
