"""Writing one sweep's runs to MLflow: its parent run and one run per trial (`Tracker`);
only the sweep driver writes, so concurrent trials never contend for an sqlite store.
Writes a server cannot take while it is down wait in an `Outbox` (`harness.tracking.outbox`)
and are sent once it is back. The store's layout: `harness.tracking.store`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag  # noqa: E402 (after the store's settings)

from harness.results.record import ROLE_TAG, SPEC_ARTIFACT, SWEEP_PARENTS, SWEEP_ROLE
from harness.tracking.outbox import Outbox
from harness.tracking.provenance import git_tags, version_tags
from harness.tracking.store import MlflowClient, artifact_location, unavailable

MAX_PARAM_LEN = 500  # older MLflow servers reject longer param values


class Tracker:
    """Writes one sweep's parent run and its trial runs (thread-safe).

    With an `outbox`, a write the server cannot take (down, restarting: see `unavailable`)
    is kept there instead of failing the sweep, and so is every later write until the
    outbox is sent: order is kept, and a trial whose run could not be created yet gets a
    placeholder id `trial:<key>` that is resolved when its run is made. Sending is tried
    again at most every RETRY_S seconds, at the end of the sweep, and when a tracker is made
    for the same outbox (`--resume`)."""

    RETRY_S = 15.0

    def __init__(
        self,
        client: MlflowClient,
        sweep: str,
        parent_run_id: str | None = None,
        outbox: str | Path | None = None,
    ):
        self._lock = threading.RLock()
        self.client = client
        self.sweep = sweep
        exp = client.get_experiment_by_name(sweep)
        self.experiment_id = (
            exp.experiment_id
            if exp
            else client.create_experiment(
                sweep, artifact_location=artifact_location(client.tracking_uri, sweep)
            )
        )
        self.parent_run_id = parent_run_id or self._new_parent()
        self._runs: dict[str, str] = {}  # trial key -> run_id
        self._waiting: set[str] = set()  # placeholders of runs not made yet
        self._common = {"sweep": sweep, **git_tags(), **version_tags()}
        self.outbox = Outbox(outbox) if outbox is not None else None
        self._retry_at = 0.0
        self.down_since: float | None = None  # when the server stopped answering
        if self.outbox is not None:
            self.send_outbox()

    def _new_parent(self) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.sweep,
            tags={ROLE_TAG: SWEEP_ROLE, "sweep": self.sweep},
        )
        return run.info.run_id

    # -- writes: each is an op, applied now or kept in the outbox

    def log_spec(self, spec_text: str) -> None:
        self.log_text(self.parent_run_id, spec_text, SPEC_ARTIFACT)  # the sweep's, as given

    def opened(self, key: str) -> str | None:
        """The run id (or outbox placeholder) of a trial this tracker has opened, else None."""
        with self._lock:
            placeholder = f"trial:{key}"
            return self._runs.get(key) or (placeholder if placeholder in self._waiting else None)

    def trial_run(self, key: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """The run of the trial `key` (unique within the sweep, kept as the `trial_key` tag),
        created once: a resumed sweep finds the run it made before. While the server is
        away: the placeholder `trial:<key>`.

        Not Tune's trial id alone: experiments started within the same half millisecond
        share their trial ids' prefix (Tune takes it from a time-based uuid1), so two
        variants' trials can carry the same id."""
        with self._lock:
            known = self.opened(key)
            if known is not None:
                return known
            placeholder = f"trial:{key}"
            params = {k: str(v)[:MAX_PARAM_LEN] for k, v in params.items()}
            made = self._write(
                {
                    "op": "open",
                    "trial": key,
                    "params": params,
                    "tags": {k: str(v) for k, v in tags.items()},
                }
            )
            if made is None:
                self._waiting.add(placeholder)
            return made or placeholder

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        numeric = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self._write(
            {
                "op": "metrics",
                "run": run_id,
                "metrics": numeric,
                "step": step,
                "time": int(time.time() * 1000),
            }
        )

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self._write({"op": "text", "run": run_id, "text": text, "name": name})

    def log_artifacts(self, run_id: str, directory: str | Path) -> None:
        self._write({"op": "artifacts", "run": run_id, "dir": str(directory)})

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._write({"op": "tags", "run": run_id, "tags": {k: str(v) for k, v in tags.items()}})

    def finish(self, run_id: str, ok: bool = True) -> None:
        self._write({"op": "finish", "run": run_id, "ok": ok})

    def interrupt(self, run_id: str) -> None:
        """End a trial's run as KILLED: stopped by something outside it, to be run again."""
        self._write({"op": "finish", "run": run_id, "ok": False, "status": "KILLED"})

    def any_interrupted(self, prefix: str, tag: str) -> bool:
        """Whether a run of this sweep whose trial key starts with `prefix` is KILLED and
        carries `tag` (False while the server is away: nothing is known then)."""
        try:
            runs = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{tag}` != '' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
                max_results=10_000,
            )
        except Exception as exc:  # noqa: BLE001 (classified just below)
            if unavailable(exc):
                return False
            raise
        return any(
            r.info.status == "KILLED" and r.data.tags.get("trial_key", "").startswith(prefix)
            for r in runs
        )

    def finish_sweep(self, ok: bool = True) -> int:
        """End the parent run and send what the outbox holds; returns the writes still kept
        (0 unless the server is still away)."""
        self.finish(self.parent_run_id, ok)
        return self.send_outbox()

    def unsent(self) -> int:
        return len(self.outbox.pending()) if self.outbox is not None else 0

    def send_outbox(self) -> int:
        """Apply the outbox's writes in order, keeping from the first one that still fails;
        returns how many are left."""
        with self._lock:
            if self.outbox is None:
                return 0
            ops = self.outbox.pending()
            for i, op in enumerate(ops):
                try:
                    self._apply(op)
                except Exception as exc:  # noqa: BLE001 (classified just below)
                    if not unavailable(exc):
                        raise
                    self.outbox.keep_only(ops[i:])
                    self._retry_at = time.monotonic() + self.RETRY_S
                    return len(ops) - i
            if ops:
                self.outbox.keep_only([])
            self.down_since = None
            return 0

    def _write(self, op: dict[str, Any]) -> str | None:
        with self._lock:
            if self.outbox is not None and self.outbox.waiting():
                due = time.monotonic() >= self._retry_at
                if not due or self.send_outbox():  # nothing overtakes what is waiting
                    self.outbox.add(op)
                    return None
            try:
                return self._apply(op)
            except Exception as exc:  # noqa: BLE001 (classified just below)
                if self.outbox is None or not unavailable(exc):
                    raise
                self.down_since = self.down_since or time.time()
                self._retry_at = time.monotonic() + self.RETRY_S
                self.outbox.add(op)
                return None

    def _resolve(self, run_id: str) -> str:
        """A real run id for a placeholder `trial:<key>` (its run was made by a later write)."""
        if not run_id.startswith("trial:"):
            return run_id
        key = run_id.split(":", 1)[1]
        if key not in self._runs:
            found = self._find_trial(key)
            if found is None:
                raise RuntimeError(f"no run was made for trial {key}")
            self._runs[key] = found
        return self._runs[key]

    def _find_trial(self, key: str) -> str | None:
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.trial_key = '{key}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def _apply(self, op: dict[str, Any]) -> str | None:
        kind = op["op"]
        if kind == "open":
            return self._open(op["trial"], op["params"], op["tags"])
        run_id = self._resolve(op["run"])
        if kind == "metrics":
            items = [Metric(k, v, op["time"], op["step"]) for k, v in op["metrics"].items()]
            for i in range(0, len(items), 1000):
                self.client.log_batch(run_id, metrics=items[i : i + 1000])
        elif kind == "text":
            self.client.log_text(run_id, op["text"], op["name"])
        elif kind == "artifacts":
            for sub in sorted(Path(op["dir"]).iterdir()):
                if sub.is_dir():
                    self.client.log_artifacts(run_id, str(sub), artifact_path=sub.name)
                else:
                    self.client.log_artifact(run_id, str(sub))
        elif kind == "tags":
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
        elif kind == "finish":
            status = op.get("status") or ("FINISHED" if op["ok"] else "FAILED")
            self.client.set_terminated(run_id, status=status)
        return None

    def _open(self, key: str, params: dict[str, str], tags: dict[str, str]) -> str:
        if key in self._runs:
            return self._runs[key]
        run_id = self._find_trial(key)
        if run_id is not None and self._conflicts(run_id, params):
            # Made by a killed driver for a trial that Tune's saved state did not keep, and
            # the trial handed out again under this number has other settings: that run
            # stands for nothing that will ever finish. Deleted (MLflow keeps it restorable)
            # so the sweep still shows one run per trial.
            self.client.set_tag(run_id, "harness.superseded", "true")
            self.client.delete_run(run_id)
            run_id = None
        if run_id is not None:  # resumed, or made by an attempt cut short
            self.client.update_run(run_id, status="RUNNING")
            # the trial may carry a new Tune id (one that Tune's saved state had not kept)
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        else:
            all_tags = {
                "trial_id": key,
                **self._common,
                **tags,
                "trial_key": key,
                "mlflow.parentRunId": self.parent_run_id,
            }
            run_id = self.client.create_run(
                self.experiment_id, run_name=all_tags["trial_id"], tags=all_tags
            ).info.run_id
        items = [Param(k, v) for k, v in sorted(params.items())]  # same values: re-logging is fine
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params
            self.client.log_batch(run_id, params=items[i : i + 100])
        self._runs[key] = run_id
        self._waiting.discard(f"trial:{key}")
        return run_id

    def _conflicts(self, run_id: str, params: dict[str, str]) -> bool:
        """Whether the run already holds some of `params` with other values (MLflow refuses
        to change a param)."""
        old = self.client.get_run(run_id).data.params
        return any(k in old and old[k] != v for k, v in params.items())

    def trial_runs(self) -> Iterable[Any]:
        with self._lock:
            return self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
                max_results=10_000,
            )


def find_sweep_parent(client: MlflowClient, sweep: str) -> str | None:
    """The newest parent run of sweep `sweep` (the one `--resume` continues)."""
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=SWEEP_PARENTS,
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None
