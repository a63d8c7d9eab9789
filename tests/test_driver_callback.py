"""The sweep driver's Tune callback against a real sqlite store, without Ray running: the
trials Tune reports land in the right MLflow runs.

Tune takes the prefix of a basic-variant experiment's trial ids from a time-based uuid1
(its first five hex digits change every ~0.4 ms), so variants whose experiments start at
the same moment in the driver's threads can hand out the same trial id; the callback must
still keep their trials apart."""

from __future__ import annotations

import json
from types import SimpleNamespace

from harness.spec.plan import RESOLVED_KEY, make_plan, with_resolved
from harness.spec.schema import build_sweep_spec
from harness.sweep.callback import DriverCallback, PhaseContext, _serving
from harness.sweep.progress import SweepProgress, VariantProgress
from harness.tracking.store import connect
from harness.tracking.writer import Tracker


def fake_trial(trial_id: str, failures: int = 0, number: int = 0):
    return SimpleNamespace(
        trial_id=trial_id,
        experiment_tag=f"{number}_lr=0.1",
        config={},
        last_result={},
        num_failures=failures,
        error_file=None,
        get_error=lambda: "RuntimeError: simulated bug",
    )


def contexts(tmp_path):
    spec = build_sweep_spec(
        {
            "name": "clash",
            "dataset": {"name": "digits", "subset": 10},
            "methods": {"erm": {}, "random": {"space": {"ipc": 2}}},
        }
    )
    plan = make_plan(spec)
    tracker = Tracker(connect(f"sqlite:///{tmp_path / 'mlflow.db'}"), "clash")
    progress = SweepProgress(mode="max")
    for v in plan:
        progress.variants[v.key] = VariantProgress(v.label, v.dataset, 1)
    return (
        tracker,
        progress,
        [
            PhaseContext(
                tracker=tracker,
                variant=v,
                phase=phase,
                progress=progress,
                objective="robust_acc",
                live=None,
            )
            for v in plan
            for phase in ("search", "repeat")
        ],
    )


def serve(ctx: PhaseContext, event: str, trial) -> None:
    if not trial.config:  # what the driver's searcher hands out: the resolved spec inside
        trial.config = with_resolved(ctx.variant, {})
    token = _serving.set(ctx)
    try:
        getattr(DriverCallback(), event)(iteration=0, trials=[], trial=trial)
    finally:
        _serving.reset(token)


def test_trials_sharing_a_tune_id_across_variants_and_phases_get_their_own_runs(tmp_path):
    tracker, _, ctxs = contexts(tmp_path)
    assert len(ctxs) == 4
    for ctx in ctxs:  # every experiment's first trial: the same Tune id
        serve(ctx, "on_trial_start", fake_trial("09533_00000"))
    for ctx in ctxs:
        serve(ctx, "on_trial_complete", fake_trial("09533_00000"))
    runs = tracker.trial_runs()
    assert len(runs) == 4
    assert sorted((r.data.tags["method"], r.data.tags["phase"]) for r in runs) == [
        ("erm", "repeat"),
        ("erm", "search"),
        ("random", "repeat"),
        ("random", "search"),
    ]
    assert {r.data.tags["trial_id"] for r in runs} == {"09533_00000"}
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_retried_attempt_is_not_counted_as_still_running(tmp_path):
    tracker, progress, ctxs = contexts(tmp_path)
    ctx = ctxs[0]
    serve(ctx, "on_trial_start", fake_trial("a_00000"))
    serve(ctx, "on_trial_recover", fake_trial("a_00000", failures=1))
    serve(ctx, "on_trial_start", fake_trial("a_00000", failures=1))
    serve(ctx, "on_trial_error", fake_trial("a_00000", failures=2))
    state = progress.variants[ctx.variant.key]
    assert (state.running, state.failed, state.done) == (0, 1, 0)
    (run,) = tracker.trial_runs()
    assert run.info.status == "FAILED"
    assert run.data.tags["retried"] == "1"
    assert "simulated bug" in run.data.tags["error"]


def test_variants_start_in_method_order_across_datasets():
    """The driver starts a method's variants on every dataset together, in the spec's method
    order, so the long methods listed first overlap instead of one running alone at the end."""
    from harness.spec.plan import launch_order

    spec = build_sweep_spec(
        {
            "name": "order",
            "dataset": [{"name": "digits"}, {"name": "synthetic-robust"}],
            "methods": {"rdl": {"space": {"ipc": {"grid": [2, 4]}}}, "erm": {}, "random": {}},
        }
    )
    plan = make_plan(spec)
    assert [v.dataset for v in plan][:4] == ["digits"] * 4  # the plan itself is dataset-major
    started = launch_order(plan, lambda v: v.method)
    assert [(v.method, v.dataset) for v in started] == [
        ("rdl", "digits"),
        ("rdl", "digits"),
        ("rdl", "synthetic-robust"),
        ("rdl", "synthetic-robust"),
        ("erm", "digits"),
        ("erm", "synthetic-robust"),
        ("random", "digits"),
        ("random", "synthetic-robust"),
    ]


def test_a_variant_starts_only_when_those_before_it_have_a_trial_running():
    import threading
    import time

    import pytest

    from harness.sweep.callback import Turnstile

    gate = Turnstile(["rdl", "dc", "erm"])
    started = []

    def variant(key):
        try:
            gate.wait(key)
            started.append(key)
        except RuntimeError:
            started.append(f"{key} aborted")

    threads = {k: threading.Thread(target=variant, args=(k,)) for k in ("erm", "dc", "rdl")}
    for t in threads.values():  # the last-listed asks first
        t.start()
    threads["rdl"].join(5)
    time.sleep(0.2)
    assert started == ["rdl"]  # dc waits for rdl's first trial, erm for both
    gate.passed("rdl")
    threads["dc"].join(5)
    time.sleep(0.2)
    assert started == ["rdl", "dc"]
    gate.abort()  # Ctrl-C: a waiting variant ends instead of blocking the exit
    threads["erm"].join(5)
    assert started == ["rdl", "dc", "erm aborted"]
    with pytest.raises(RuntimeError):
        gate.wait("dc")


def test_the_run_records_the_spec_the_trial_carries_not_a_second_resolution(tmp_path):
    """The driver logs the resolved spec that Tune carries in the trial's config (the one the
    worker runs), instead of resolving the trial again: a marked dump shows which it used."""
    tracker, _, ctxs = contexts(tmp_path)
    ctx = ctxs[0]
    config = with_resolved(ctx.variant, {})
    tree = json.loads(config[RESOLVED_KEY])
    assert tree["seed"] == 0
    tree["seed"] = 777  # not what resolving the variant again would give
    trial = fake_trial("m_00000")
    trial.config = {**config, RESOLVED_KEY: json.dumps(tree)}
    serve(ctx, "on_trial_start", trial)
    (run,) = tracker.trial_runs()
    assert run.data.params["seed"] == "777"


def test_one_variant_waits_ready_for_each_slot_that_frees():
    """With variants of one trial each, two slots take three variant threads: two running and
    one whose experiment is set up and waiting, so a slot that frees starts a trial at once.
    A variant whose search runs `max_concurrent` trials at once needs fewer threads."""
    from harness.sweep.driver import default_parallel_variants

    def plan(methods, **search):
        spec = build_sweep_spec(
            {
                "name": "slots",
                "dataset": {"name": "digits"},
                "trials": 4,
                "search": {"asha": False, **search},
                "methods": methods,
            }
        )
        return spec, make_plan(spec)

    fixed = {"erm": {}, "random": {"space": {"ipc": 2}}}
    searched = {"pgd_at": {"space": {"train.lr": {"loguniform": [0.01, 0.1]}}}}
    spec, variants = plan(fixed, max_concurrent=2)
    assert default_parallel_variants(spec, variants, {"CPU": 2.0}) == 3
    assert default_parallel_variants(spec, variants, {"CPU": 8.0}) == 9
    spec, variants = plan(searched, max_concurrent=2)
    assert default_parallel_variants(spec, variants, {"CPU": 2.0}) == 2
    spec, variants = plan({**searched, **fixed}, max_concurrent=4)  # the narrowest decides
    assert default_parallel_variants(spec, variants, {"CPU": 8.0}) == 9
    spec, variants = plan(searched, max_concurrent=4)
    assert default_parallel_variants(spec, variants, {"CPU": 8.0}) == 3
    assert default_parallel_variants(spec, variants, {"CPU": 1000.0}) == 16  # capped


def test_a_trial_handed_out_again_finds_its_run_by_number_not_by_tune_id(tmp_path):
    """A killed driver had opened a run for a trial that Tune's saved state did not keep yet;
    the resumed experiment hands the trial out again under the same number and a new id.
    Same settings: the run is taken up again (its id tag updated). Other settings (a search
    that suggested otherwise the second time): the stale run is deleted, a new one made;
    either way one run per trial."""
    tracker, _, ctxs = contexts(tmp_path)
    ctx = ctxs[0]
    serve(ctx, "on_trial_start", fake_trial("first", number=1))
    (run,) = tracker.trial_runs()
    resumed = Tracker(tracker.client, "clash", tracker.parent_run_id)
    ctx2 = PhaseContext(
        tracker=resumed,
        variant=ctx.variant,
        phase=ctx.phase,
        progress=ctx.progress,
        objective=ctx.objective,
        live=None,
    )
    serve(ctx2, "on_trial_start", fake_trial("second", number=1))
    serve(ctx2, "on_trial_complete", fake_trial("second", number=1))
    (again,) = resumed.trial_runs()
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["trial_id"] == "second"

    third = Tracker(tracker.client, "clash", tracker.parent_run_id)
    ctx3 = PhaseContext(
        tracker=third,
        variant=ctx.variant,
        phase=ctx.phase,
        progress=ctx.progress,
        objective=ctx.objective,
        live=None,
    )
    other = fake_trial("third", number=1)
    config = with_resolved(ctx.variant, {})
    tree = json.loads(config[RESOLVED_KEY])
    tree["seed"] = 5  # the settings the trial carries this time
    other.config = {**config, RESOLVED_KEY: json.dumps(tree)}
    serve(ctx3, "on_trial_start", other)
    (latest,) = third.trial_runs()
    assert latest.info.run_id != run.info.run_id and latest.data.params["seed"] == "5"
    stale = tracker.client.get_run(run.info.run_id)
    assert stale.info.lifecycle_stage == "deleted"
    assert stale.data.tags["harness.superseded"] == "true"
