"""Reading a tracking store back: a sweep's trial runs as plain `RunData` (what
`harness.board.leaderboard` and `harness.results.record` work on) and a trial's recorded spec
(`harness run --from-run`). Writing is `harness.tracking.writer`'s."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness.errors import HarnessInputError
from harness.results.record import (
    ROLE_TAG,
    SPEC_ARTIFACT,
    SWEEP_PARENTS,
    SWEEP_ROLE,
    is_sweep_parent,
)
from harness.tracking.store import connect, require_existing_store


@dataclass(frozen=True)
class RunData:
    """One run as plain data, what `harness.board.leaderboard` works on (it never sees mlflow)."""

    run_id: str
    experiment_id: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING, SCHEDULED
    start_time: int  # ms since the epoch
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # latest value of each metric


def load_trial_runs(
    uri: str | None = None, *, experiment: str | None = None, sweep_run_id: str | None = None
) -> list[RunData]:
    """The trial runs of one sweep: by experiment name, by the sweep's parent run id, or
    (neither given) of the only experiment in the store that holds a sweep."""
    if experiment and sweep_run_id:
        raise HarnessInputError("give --experiment or --sweep, not both.", field="--sweep")
    client = connect(require_existing_store(uri))
    if sweep_run_id:
        return _children(client, _sweep_parent(client, sweep_run_id))
    exp_id = _experiment_id(client, experiment) if experiment else _only_sweep_experiment(client)
    return [r for r in _search(client, [exp_id], "") if _is_trial(r)]


def recorded_spec(uri: str | None, run_id: str) -> dict[str, Any]:
    """The resolved RunSpec tree a trial run recorded (its `SPEC_ARTIFACT`, spec.yaml)."""
    from harness.spec.schema import read_yaml

    client = connect(require_existing_store(uri))
    _trial_run(client, run_id)
    if SPEC_ARTIFACT not in {f.path for f in client.list_artifacts(run_id)}:
        raise HarnessInputError(
            f"run {run_id!r} has no {SPEC_ARTIFACT} artifact, so there is "
            "no recorded spec to re-run.",
            field="--from-run",
        )
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(client.download_artifacts(run_id, SPEC_ARTIFACT, tmp)).read_text("utf-8")
    tree = read_yaml(text)
    if not isinstance(tree, dict):
        raise HarnessInputError(
            f"the {SPEC_ARTIFACT} of run {run_id!r} is not a mapping.", field="--from-run"
        )
    return tree


def _trial_run(client: MlflowClient, run_id: str) -> RunData:
    try:
        run = _to_data(client.get_run(run_id))
    except MlflowException:
        raise HarnessInputError(
            f"no run {run_id!r} in the store; give the run id of a trial (a child run of a sweep).",
            field="--from-run",
        ) from None
    if is_sweep_parent(run.tags):
        raise HarnessInputError(
            f"run {run_id!r} is a sweep's parent run; give the run id of one of its trials.",
            field="--from-run",
        )
    return run


def _to_data(run: Any) -> RunData:
    return RunData(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        start_time=run.info.start_time or 0,
        tags=dict(run.data.tags),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
    )


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[RunData]:
    out: list[RunData] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        out.extend(_to_data(r) for r in page)
        token = page.token
        if not token:
            return out


def _is_trial(run: RunData) -> bool:
    return not is_sweep_parent(run.tags) and "mlflow.parentRunId" in run.tags


def _sweep_parent(client: MlflowClient, run_id: str) -> RunData:
    try:
        run = _to_data(client.get_run(run_id))
    except MlflowException:
        raise HarnessInputError(
            f"no run {run_id!r} in the store; give the run id of a sweep's parent run "
            "(its row named after the sweep in `harness ui`).",
            field="--sweep",
        ) from None
    if not is_sweep_parent(run.tags):
        raise HarnessInputError(
            f"run {run_id!r} is not a sweep's parent run (tag {ROLE_TAG}={SWEEP_ROLE}); "
            "give the parent run id, or use --experiment NAME.",
            field="--sweep",
        )
    return run


def _children(client: MlflowClient, parent: RunData) -> list[RunData]:
    return _search(client, [parent.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.run_id}'")


def _experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        known = ", ".join(sorted(_sweep_experiments(client))) or "none"
        raise HarnessInputError(
            f"no experiment named {name!r} in the store; experiments holding sweeps: {known}.",
            field="--experiment",
        )
    return exp.experiment_id


def _sweep_experiments(client: MlflowClient) -> dict[str, str]:
    """Experiment name -> id, for experiments that hold at least one sweep parent run."""
    names = _experiment_names(client)
    parents = _search(client, list(names), SWEEP_PARENTS) if names else []
    return {names[p.experiment_id]: p.experiment_id for p in parents}


def _experiment_names(client: MlflowClient) -> dict[str, str]:
    """Experiment id -> name, every active experiment."""
    out: dict[str, str] = {}
    token = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        out.update((e.experiment_id, e.name) for e in page)
        token = page.token
        if not token:
            return out


def _only_sweep_experiment(client: MlflowClient) -> str:
    found = _sweep_experiments(client)
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise HarnessInputError(
            "the store holds no sweep; run `harness sweep SPEC` first.", field="--experiment"
        )
    raise HarnessInputError(
        f"the store holds several sweeps ({', '.join(sorted(found))}); pick one with "
        "--experiment NAME or --sweep RUN_ID.",
        field="--experiment",
    )
