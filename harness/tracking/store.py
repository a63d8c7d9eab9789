"""MLflow stores: the layout a sweep writes, the URIs the harness accepts, connecting (with a
quick failure when a server is away), and telling an outage from a refusal. Writing runs is
`harness.tracking.writer`, reading them back `harness.tracking.reader`.

Layout of a store (what `harness leaderboard` and the MLflow UI rely on):
- one experiment per sweep (named after the sweep);
- one parent run per sweep (tag `harness.role=sweep`), one child run per trial (tags
  `mlflow.parentRunId`, `method`, `variant`, `dataset`, `sweep`, `trial_id` (Tune's),
  `trial_key` (unique in the sweep: `<variant key>/<phase>/<trial number>`), `phase`
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
from pathlib import Path
from urllib.parse import urlsplit

from harness.errors import HarnessInputError

# Fail fast on an unreachable server instead of retrying for minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

import mlflow  # noqa: E402,F401 (imported once the settings above are in place)

logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines about store migrations
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

DEFAULT_URI = "sqlite:///mlflow.db"


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
            masked(
                f"cannot reach the MLflow tracking store {uri!r} ({type(exc).__name__}: "
                f"{detail}). Start the server (`mlflow server --host 127.0.0.1 --port "
                "5000`), fix the URI, or leave --tracking-uri out to use sqlite:///mlflow.db "
                "in this directory.",
                uri,
            ),
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
            field="--tracking-uri",
        ) from None
    shown = str(path)[:300]
    if head != SQLITE_MAGIC:
        raise HarnessInputError(
            f"{shown!r} is not a SQLite database (corrupt, or another kind of file), so it "
            "cannot be an MLflow tracking store. Point --tracking-uri (or $MLFLOW_TRACKING_URI) "
            "at the right store, or move the file away and a new store is made there; "
            "nothing was changed.",
            field="--tracking-uri",
        )
    import sqlite3

    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        ) as db:
            tables = {
                row[0] for row in db.execute("select name from sqlite_master where type = 'table'")
            }
    except sqlite3.Error as exc:
        raise HarnessInputError(
            f"{shown!r} is a damaged SQLite database ({exc}); MLflow cannot read runs from it. "
            "Restore it from a copy, or point --tracking-uri (or $MLFLOW_TRACKING_URI) at "
            "another store; nothing was changed.",
            field="--tracking-uri",
        ) from None
    if tables and "experiments" not in tables:
        listed = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise HarnessInputError(
            f"{shown!r} is a SQLite database of something else (tables: {listed}), not an "
            "MLflow tracking store; MLflow would add its tables to it. Point --tracking-uri "
            "(or $MLFLOW_TRACKING_URI) at an MLflow store or a new file; nothing was changed.",
            field="--tracking-uri",
        )


def unavailable(exc: BaseException) -> bool:
    """True when `exc` says the tracking server could not be reached or answered 5xx (down,
    restarting, behind a failing proxy), as opposed to a request it refused."""
    import requests

    if isinstance(
        exc,
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            ConnectionError,
            TimeoutError,
        ),
    ):
        return True
    if isinstance(exc, MlflowException):
        text = str(exc)
        if text.startswith("API request to") and (
            "failed with exception" in text
            or "failed with timeout" in text
            or any(f"failed with error code {code}" in text for code in (502, 503, 504))
        ):
            return True
        return exc.error_code == "TEMPORARILY_UNAVAILABLE"
    return False


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
        return Path(uri[len("sqlite:///") :].split("?", 1)[0])
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
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
