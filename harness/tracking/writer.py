"""MLflow tracking: writing runs (reading them back is `harness.tracking.reader`; the two are the only
modules that import mlflow).

Layout of a store (what `harness leaderboard` and the MLflow UI rely on):
- one experiment per sweep (named after the sweep);
- one parent run per sweep (tag `harness.role=sweep`), one child run per trial (tags
  `mlflow.parentRunId`, `method`, `variant`, `dataset`, `sweep`, `trial_id` (Tune's),
  `trial_key` (unique in the sweep: `<variant key>/<phase>/<trial_id>`), `phase`
  (`search` or `repeat`), `device`, and from `harness.tracking.provenance` `git_sha`, `git_dirty` and
  the versions of torch, ray, mlflow and the harness);
- params: the resolved trial spec flattened to dotted keys, plus `method` and `dataset`, so
  the same names mean the same thing for every method in the UI's compare view;
- metrics: the `harness run --json` keys (clean_acc, robust_acc, autoattack_acc when on,
  val_robust_acc, learn_seconds, train_seconds, work_epochs, ...), per-epoch progress with
  steps, and per-architecture `arch.<name>.<metric>`;
- artifacts: `spec.yaml` (resolved), `dataset/` (learned tensor file and image grid) and
  `model/` (final weights) of each trial.

Only the sweep driver writes, so concurrent trials never contend for an sqlite store. Writes a
server cannot take while it is down wait in an `Outbox` on disk and are sent once it is back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from harness.errors import HarnessInputError
from harness.tracking.provenance import git_tags, version_tags
from harness.results.record import SPEC_ARTIFACT

DEFAULT_URI = "sqlite:///mlflow.db"

# Fail fast on an unreachable server instead of retrying for minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

import mlflow  # noqa: E402

logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines about store migrations
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

MAX_PARAM_LEN = 500  # older MLflow servers reject longer param values


# Stores MLflow 3 can write runs to. File stores (file:..., a bare directory) are refused by
# MLflow itself now; say so up front with the fix instead of a traceback from deep inside it.
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def masked(text: str, uri: str) -> str:
    """`text` with the password of `uri` (http://user:secret@host) replaced by ***."""
    secret = urlsplit(uri).password if "://" in uri else None
    return text.replace(secret, "***") if secret else text


def resolve_uri(uri: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd; a URI
    of a kind MLflow cannot keep runs in is refused (exit 2) here, the one place URIs enter."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme not in SCHEMES:
        shown = masked(uri, uri)
        raise HarnessInputError(
            f"{shown!r} is not a tracking store MLflow can record runs in (file stores and "
            f"bare paths are refused by MLflow 3; supported: {', '.join(SCHEMES)}). Use e.g. "
            "sqlite:///mlflow.db for a local store or http://127.0.0.1:5000 for a server.",
            field="--tracking-uri",
        )
    return uri


@contextlib.contextmanager
def _quick_failure():
    """Bound MLflow's HTTP retries while probing a store: a server that is down is reported
    in seconds, not after minutes of back-off (the sweep itself keeps MLflow's defaults)."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def connect(uri: str | None = None) -> MlflowClient:
    """A client for the store, checked reachable (exit 2 with the fix when it is not)."""
    uri = resolve_uri(uri)
    check_sqlite_store(uri)
    try:
        with _quick_failure():
            client = MlflowClient(tracking_uri=uri)  # opens (and may migrate) an sqlite store
            client.search_experiments(max_results=1)
    except Exception as exc:  # any transport or store error means we cannot record anything
        detail = str(exc).splitlines()[0][:200] if str(exc) else "no detail"
        raise HarnessInputError(
            masked(f"cannot reach the MLflow tracking store {uri!r} ({type(exc).__name__}: "
                   f"{detail}). Start the server (`mlflow server --host 127.0.0.1 --port "
                   "5000`), fix the URI, or leave --tracking-uri out to use sqlite:///mlflow.db "
                   "in this directory.", uri),
            field="--tracking-uri",
        ) from None
    return client


SQLITE_MAGIC = b"SQLite format 3\x00"


def check_sqlite_store(uri: str) -> None:
    """An existing sqlite store file must be an MLflow store: refuse (exit 2) a file that is
    not a SQLite database (random bytes, another format) or one that holds other tables, before
    MLflow opens it. MLflow would fail on the first with a traceback and add its own tables to
    the second. A missing or empty file is a new store and is left to MLflow."""
    if not uri.startswith("sqlite:"):
        return
    path = local_store_path(uri)
    try:
        if path is None or not path.is_file() or path.stat().st_size == 0:
            return
        with open(path, "rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise HarnessInputError(
            f"cannot read the tracking store {str(path)[:300]!r} ({exc.strerror}). Fix its "
            "permissions or point --tracking-uri (or $MLFLOW_TRACKING_URI) at another store.",
            field="--tracking-uri") from None
    shown = str(path)[:300]
    if head != SQLITE_MAGIC:
        raise HarnessInputError(
            f"{shown!r} is not a SQLite database (corrupt, or another kind of file), so it "
            "cannot be an MLflow tracking store. Point --tracking-uri (or $MLFLOW_TRACKING_URI) "
            "at the right store, or move the file away and a new store is made there; "
            "nothing was changed.", field="--tracking-uri")
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                                timeout=10)) as db:
            tables = {row[0] for row in db.execute(
                "select name from sqlite_master where type = 'table'")}
    except sqlite3.Error as exc:
        raise HarnessInputError(
            f"{shown!r} is a damaged SQLite database ({exc}); MLflow cannot read runs from it. "
            "Restore it from a copy, or point --tracking-uri (or $MLFLOW_TRACKING_URI) at "
            "another store; nothing was changed.", field="--tracking-uri") from None
    if tables and "experiments" not in tables:
        listed = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise HarnessInputError(
            f"{shown!r} is a SQLite database of something else (tables: {listed}), not an "
            "MLflow tracking store; MLflow would add its tables to it. Point --tracking-uri "
            "(or $MLFLOW_TRACKING_URI) at an MLflow store or a new file; nothing was changed.",
            field="--tracking-uri")


def unavailable(exc: BaseException) -> bool:
    """True when `exc` says the tracking server could not be reached or answered 5xx (down,
    restarting, behind a failing proxy), as opposed to a request it refused."""
    import requests

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                        ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, MlflowException):
        text = str(exc)
        if text.startswith("API request to") and (
            "failed with exception" in text or "failed with timeout" in text
            or any(f"failed with error code {code}" in text for code in (502, 503, 504))
        ):
            return True
        return exc.error_code == "TEMPORARILY_UNAVAILABLE"
    return False


class Outbox:
    """Tracking writes that could not reach the server, kept on disk in order until they can:
    `ops.jsonl` (one write per line) and `artifacts/<n>/` (copies of artifact folders, which
    may be temporary). A sweep that outlives its server loses nothing; what is here is sent
    when the server answers again, or by `harness sweep ... --resume`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.ops_file = self.root / "ops.jsonl"

    def pending(self) -> list[dict[str, Any]]:
        if not self.ops_file.exists():
            return []
        import json

        lines = self.ops_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def add(self, op: dict[str, Any]) -> None:
        import json
        import shutil

        self.root.mkdir(parents=True, exist_ok=True)
        if op["op"] == "artifacts":  # the folder may be gone by the time the server is back
            copy = self.root / "artifacts" / f"{time.time_ns()}"
            shutil.copytree(op["dir"], copy)
            op = {**op, "dir": str(copy)}
        with open(self.ops_file, "a") as out:
            out.write(json.dumps(op) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def waiting(self) -> bool:
        """Whether writes wait here (a stat, no read: asked before every tracking write)."""
        try:
            return self.ops_file.stat().st_size > 0
        except FileNotFoundError:
            return False

    def keep_only(self, ops: list[dict[str, Any]]) -> None:
        """Rewrite the outbox with `ops` (the ones still unsent), atomically."""
        import json
        import shutil

        kept = {op["dir"] for op in ops if op["op"] == "artifacts"}
        tmp = self.ops_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(op) + "\n" for op in ops))
        os.replace(tmp, self.ops_file)
        for folder in (self.root / "artifacts").glob("*"):
            if str(folder) not in kept:
                shutil.rmtree(folder, ignore_errors=True)


class Tracker:
    """Writes one sweep's parent run and its trial runs (thread-safe).

    With an `outbox`, a write the server cannot take (down, restarting: see `unavailable`)
    is kept there instead of failing the sweep, and so is every later write until the
    outbox is sent: order is kept, and a trial whose run could not be created yet gets a
    placeholder id `trial:<key>` that is resolved when its run is made. Sending is tried
    again at most every RETRY_S seconds, at the end of the sweep, and when a tracker is made
    for the same outbox (`--resume`)."""

    RETRY_S = 15.0

    def __init__(self, client: MlflowClient, sweep: str, parent_run_id: str | None = None,
                 outbox: str | Path | None = None):
        self._lock = threading.RLock()
        self.client = client
        self.sweep = sweep
        exp = client.get_experiment_by_name(sweep)
        self.experiment_id = exp.experiment_id if exp else client.create_experiment(
            sweep, artifact_location=artifact_location(client.tracking_uri, sweep))
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
            self.experiment_id, run_name=self.sweep, tags={"harness.role": "sweep", "sweep": self.sweep}
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
            made = self._write({"op": "open", "trial": key, "params": params,
                                "tags": {k: str(v) for k, v in tags.items()}})
            if made is None:
                self._waiting.add(placeholder)
            return made or placeholder

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        numeric = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._write({"op": "metrics", "run": run_id, "metrics": numeric, "step": step,
                     "time": int(time.time() * 1000)})

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
                max_results=10_000)
        except Exception as exc:  # noqa: BLE001 (classified just below)
            if unavailable(exc):
                return False
            raise
        return any(r.info.status == "KILLED" and r.data.tags.get("trial_key", "").startswith(prefix)
                   for r in runs)

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
            all_tags = {"trial_id": key, **self._common, **tags, "trial_key": key,
                        "mlflow.parentRunId": self.parent_run_id}
            run_id = self.client.create_run(self.experiment_id, run_name=all_tags["trial_id"],
                                            tags=all_tags).info.run_id
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
        [exp.experiment_id], filter_string="tags.`harness.role` = 'sweep'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0].info.run_id if runs else None


def require_existing_store(uri: str | None) -> str:
    """The resolved URI; a local store (sqlite file, file:// or plain directory) must exist,
    so that a mistyped path is reported instead of silently creating an empty store."""
    uri = resolve_uri(uri)
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise HarnessInputError(
            f"the MLflow store {masked(uri, uri)!r} does not exist ({path} is missing). Run a sweep first, "
            "or point --tracking-uri (or $MLFLOW_TRACKING_URI) at an existing store.",
            field="--tracking-uri",
        )
    return uri


def local_store_path(uri: str) -> Path | None:
    """The file or directory behind a local store URI; None for servers and databases."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):].split("?", 1)[0])
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" not in uri and uri:
        return Path(uri)
    return None


def artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a local sqlite store's experiment go beside the database file
    (`<store dir>/mlruns/<experiment>`), whatever the working directory; MLflow's default
    (`./mlruns` under the current directory) would scatter them. None: the server decides."""
    path = local_store_path(uri)
    if path is None or not uri.startswith("sqlite:"):
        return None
    return (path.expanduser().resolve().parent / "mlruns" / experiment).as_uri()
