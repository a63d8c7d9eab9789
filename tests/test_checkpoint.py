"""A trial killed part-way goes on from its last saved progress and ends with the scores of
an uninterrupted run (harness.protocol.checkpoint): adversarial training mid-epochs and between
models, rdl mid-learning, and a learned set's evaluation.

"Killed" here is a save that raises after it wrote: what the trial had saved is all the
restarted one gets, as after a SIGKILL. The sweep version (Tune restoring a trial from its
checkpoint) is in test_sweep.py."""

from __future__ import annotations

import io

import pytest
import torch

from harness.protocol.checkpoint import TrialCheckpoint
from harness.protocol.evaluate import run_trial
from harness.spec.schema import build_run_spec


class Killed(Exception):
    pass


class Storage:
    """Keeps each save as bytes (as a file would) and raises after save number `kill_at`."""

    def __init__(self, kill_at: int | None = None):
        self.kill_at = kill_at
        self.saves: list[bytes] = []

    def persist(self, sections: dict) -> None:
        buf = io.BytesIO()
        torch.save(sections, buf)
        self.saves.append(buf.getvalue())
        if self.kill_at is not None and len(self.saves) == self.kill_at:
            raise Killed

    def last(self) -> dict:
        return torch.load(io.BytesIO(self.saves[-1]), weights_only=True)


SPECS = {
    # 2 models of an adversarially trained MLP: saves at every epoch and after each model
    "pgd_at": {
        "dataset": {"name": "digits", "subset": 30},
        "method": {"name": "pgd_at", "steps": 3},
        "train": {"epochs": 4, "early_stop": True},
        "eval": {"archs": ["mlp"], "models_per_arch": 2, "max_test": 100, "max_val": 100},
        "threat": {"steps": 5, "autoattack": "fast"},
    },
    # rdl with a short-lived network (a save point every 3 outer steps), then 2 linear models
    "rdl": {
        "dataset": {"name": "digits", "subset": 30},
        "method": {
            "name": "rdl",
            "ipc": 2,
            "outer_steps": 9,
            "reinit_every": 3,
            "unroll_min": 5,
            "unroll_max": 5,
            "probe_every": 0,
        },
        "eval": {
            "archs": ["linear"],
            "models_per_arch": 2,
            "epochs": 20,
            "max_test": 100,
            "max_val": 100,
        },
        "threat": {"steps": 5, "autoattack": "fast"},
    },
    # the condensation loops save between iterations (DC: a network each; DM: a step each)
    "dc": {
        "dataset": {"name": "digits", "subset": 30},
        "method": {"name": "dc", "ipc": 2, "iterations": 4, "batch_real": 16, "arch": "mlp"},
        "eval": {
            "archs": ["linear"],
            "models_per_arch": 1,
            "epochs": 10,
            "max_test": 100,
            "max_val": 100,
        },
        "threat": {"steps": 3, "autoattack": "off"},
    },
    "dm": {
        "dataset": {"name": "digits", "subset": 30},
        "method": {"name": "dm", "ipc": 2, "iterations": 5, "batch_real": 16, "arch": "mlp"},
        "eval": {
            "archs": ["linear"],
            "models_per_arch": 1,
            "epochs": 10,
            "max_test": 100,
            "max_val": 100,
        },
        "threat": {"steps": 3, "autoattack": "off"},
    },
}

SCORES = (
    "clean_acc",
    "robust_acc",
    "autoattack_acc",
    "val_clean_acc",
    "val_robust_acc",
    "learn_work_epochs",
    "train_work_epochs",
    "dataset_size",
)


def scores(result) -> dict:
    out = {k: getattr(result, k) for k in SCORES}
    out["models"] = [
        (m.arch, m.seed, m.clean_acc, m.robust_acc, m.kept_epoch) for m in result.models
    ]
    return out


def trial(name: str, store: TrialCheckpoint):
    return run_trial(build_run_spec({**SPECS[name], "seed": 3}), checkpoint=store)


@pytest.fixture(scope="module")
def uninterrupted():
    out = {}
    for name in SPECS:
        storage = Storage()
        result = trial(name, TrialCheckpoint(persist=storage.persist, every_s=0.0))
        out[name] = (result, storage)
    return out


@pytest.mark.parametrize(
    "name, kill_at",
    [
        ("pgd_at", 2),  # in the first model's training (epoch 2 saved)
        ("pgd_at", 5),  # in the second model's training, the first one scored
        ("rdl", 1),  # mid-learning (after outer step 3)
        ("rdl", 4),  # in the evaluation, the learned set saved
        ("dc", 2),  # mid-learning (after iteration 2 of 4)
        ("dm", 3),  # mid-learning (after step 3 of 5)
    ],
)
def test_a_killed_trial_resumes_where_it_was_and_ends_the_same(uninterrupted, name, kill_at):
    full, full_storage = uninterrupted[name]
    assert len(full_storage.saves) > kill_at  # the kill falls inside the run
    storage = Storage(kill_at=kill_at)
    with pytest.raises(Killed):
        trial(name, TrialCheckpoint(persist=storage.persist, every_s=0.0))
    saved = storage.last()
    resumed_storage = Storage()
    resumed = trial(name, TrialCheckpoint(saved, persist=resumed_storage.persist, every_s=0.0))
    # it went on: fewer saves than a run from the start makes
    assert len(resumed_storage.saves) < len(full_storage.saves)
    assert scores(resumed) == scores(full)
    if full.learned is not None:
        assert torch.equal(resumed.learned.x, full.learned.x)
        assert torch.equal(resumed.learned.y, full.learned.y)


def test_sections_name_the_stage_they_resume(uninterrupted):
    _, pgd = uninterrupted["pgd_at"]
    _, rdl = uninterrupted["rdl"]
    first = torch.load(io.BytesIO(pgd.saves[0]), weights_only=True)
    assert set(first) == {"training"} and first["training"]["tag"] == "mlp/0"
    assert first["training"]["epoch"] == 1
    learning = torch.load(io.BytesIO(rdl.saves[0]), weights_only=True)
    assert set(learning) == {"learning"} and learning["learning"]["next_step"] == 3
    final = torch.load(io.BytesIO(rdl.saves[-1]), weights_only=True)
    assert set(final) == {"learned", "models"} and len(final["models"]["scores"]) == 2
    for name, steps in (("dc", 4), ("dm", 5)):  # a save after every step but the last
        _, saves = uninterrupted[name]
        learning = [
            torch.load(io.BytesIO(b), weights_only=True).get("learning") for b in saves.saves
        ]
        assert [x["next_step"] for x in learning if x] == list(range(1, steps))


def test_saves_are_spaced_by_the_interval():
    storage = Storage()
    store = TrialCheckpoint(persist=storage.persist, every_s=3600.0)
    trial("pgd_at", store)
    # nothing is saved within the hour, not even a finished model
    assert storage.saves == []
    assert set(store.sections) == {"models"}  # it is kept, for the next save


def test_nothing_is_saved_without_storage():
    store = TrialCheckpoint()
    trial("pgd_at", store)
    assert store.saves == 0
