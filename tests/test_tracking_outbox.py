"""Tracking writes survive a tracking server that goes away: kept in the outbox in order,
sent when it answers again or by a tracker made for the same outbox (`--resume`).

The store here is a real sqlite store; "down" is a client whose every call fails the way
MLflow's REST client fails when the server does not answer (the real-server version of
this is in test_mlflow_server.py)."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from harness.tracking.store import connect, unavailable
from harness.tracking.writer import Tracker


class Outage:
    """A real MlflowClient whose calls fail like an unreachable server while `down`."""

    def __init__(self, client):
        self.client = client
        self.down = False

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if self.down:
                raise MlflowException(
                    "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs"
                    "/create failed with exception ConnectionError(refused)"
                )
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def setup(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = Outage(connect(uri))
    tracker = Tracker(client, "outage", outbox=tmp_path / "outbox")
    tracker.RETRY_S = 0.0  # retry at every write
    return tracker, client, tmp_path


def runs_by_trial(tracker: Tracker) -> dict:
    return {
        r.data.tags["trial_id"]: r
        for r in tracker.client.client.search_runs(
            [tracker.experiment_id], filter_string="tags.trial_id != ''"
        )
    }


def write_trial(tracker: Tracker, trial: str, tmp_path, acc: float) -> None:
    run = tracker.trial_run(trial, {"train.lr": 0.1}, {"method": "erm"})
    tracker.log_metrics(run, {"clean_acc": acc, "epoch": 1}, step=1)
    art = tmp_path / f"art-{trial}"
    (art / "model").mkdir(parents=True)
    (art / "spec.yaml").write_text(f"trial: {trial}\n")
    (art / "model" / "mlp.pt").write_bytes(b"weights")
    tracker.log_artifacts(run, art)
    for f in (art / "model" / "mlp.pt", art / "spec.yaml"):
        f.unlink()  # temporary, like a downloaded checkpoint: the outbox keeps its own copy
    tracker.set_tags(run, {"device": "cpu"})
    tracker.finish(run, ok=True)


def check_recorded(tracker: Tracker, trials: dict[str, float]) -> None:
    runs = runs_by_trial(tracker)
    assert set(runs) == set(trials)
    for trial, acc in trials.items():
        run = runs[trial]
        assert run.info.status == "FINISHED" and run.data.tags["device"] == "cpu"
        assert run.data.metrics["clean_acc"] == acc and run.data.params["train.lr"] == "0.1"
        assert run.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
        files = {f.path for f in tracker.client.client.list_artifacts(run.info.run_id)}
        assert {"spec.yaml", "model"} <= files


def test_writes_wait_in_order_and_go_when_the_server_is_back(setup):
    tracker, client, tmp_path = setup
    write_trial(tracker, "a", tmp_path, 0.5)  # server up
    client.down = True
    write_trial(tracker, "b", tmp_path, 0.6)  # its run cannot even be made yet
    assert tracker.unsent() > 0 and tracker.down_since is not None
    client.down = False
    assert set(runs_by_trial(tracker)) == {"a"}
    write_trial(tracker, "c", tmp_path, 0.7)  # the next write sends what waited, first
    assert tracker.unsent() == 0
    check_recorded(tracker, {"a": 0.5, "b": 0.6, "c": 0.7})
    assert not list((tmp_path / "outbox" / "artifacts").glob("*"))  # copies cleaned up


def test_what_is_left_at_the_end_is_sent_by_a_resumed_tracker(setup):
    tracker, client, tmp_path = setup
    client.down = True
    write_trial(tracker, "a", tmp_path, 0.5)
    assert tracker.finish_sweep() > 0  # still down at the end: the count is reported
    client.down = False
    resumed = Tracker(client, "outage", tracker.parent_run_id, outbox=tmp_path / "outbox")
    assert resumed.unsent() == 0
    check_recorded(resumed, {"a": 0.5})
    parent = client.client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED"


def test_a_refused_write_is_an_error_not_kept(setup):
    tracker, _, _ = setup
    run = tracker.trial_run("a", {"train.lr": 0.1}, {"method": "erm"})
    with pytest.raises(MlflowException):  # an invalid tag name: a bug to see, not an outage
        tracker.set_tags(run, {"bad?name": "x"})
    assert tracker.unsent() == 0


@pytest.mark.parametrize(
    "error, down",
    [
        (
            MlflowException("API request to http://h/api failed with exception ConnectionError()"),
            True,
        ),
        (MlflowException("API request to http://h/api failed with timeout exception x."), True),
        (MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE), True),
        (MlflowException("API request to endpoint /x failed with error code 502 != 200."), True),
        (MlflowException("API request to endpoint /x failed with error code 500 != 200."), False),
        (MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE), False),
        (MlflowException("a client-side error"), False),
        (ConnectionRefusedError(), True),
        (ValueError("x"), False),
    ],
)
def test_unavailable_tells_an_outage_from_a_refusal(error, down):
    assert unavailable(error) is down
