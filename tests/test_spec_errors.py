"""Bad specs are refused with exit code 2 and one paragraph naming the field by its spec path:
hand-picked cases from the reliability issue, and hundreds of generated ones per run."""

from __future__ import annotations

import copy
import math
import time

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.cli.sweeps import load_sweep
from harness.errors import HarnessInputError

VALID = {
    "name": "ok",
    "dataset": {"name": "digits", "subset": 10},
    "threat": {"norm": "linf", "eps": 0.2, "steps": 5, "autoattack": "fast"},
    "train": {"epochs": 2, "lr": 0.05},
    "eval": {"archs": ["mlp"], "models_per_arch": 1, "max_val": 100},
    "trials": 2,
    "methods": {
        "erm": {"space": {"train.lr": {"loguniform": [0.01, 0.2]}}},
        "random": {"space": {"ipc": {"grid": [1, 3]}}},
    },
}


def validate(tmp_path, text: str | bytes):
    path = tmp_path / "spec.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return CliRunner().invoke(main, ["validate", str(path)])


def dump(tree) -> str:
    return yaml.safe_dump(tree, sort_keys=False)


def with_(path: str, value):
    tree = copy.deepcopy(VALID)
    node = tree
    *parents, last = path.split("/")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[last] = value
    return tree


def test_the_base_spec_is_valid(tmp_path):
    res = validate(tmp_path, dump(VALID))
    assert res.exit_code == 0, res.output


CASES = [
    # (spec tree or raw text, the field path the message must name, a word it must contain)
    (with_("threat/eps", math.inf), "threat.eps", "finite"),
    (with_("train/lr", math.nan), "train.lr", "finite"),
    (with_("threat/alpha", -1.0), "threat.alpha", "greater than 0"),
    (with_("seed", 2**64), "seed", "less than or equal"),
    (with_("search", {"seed": 2**32}), "search.seed", "4294967295"),  # numpy's 32-bit seeds
    (with_("dataset/split_seed", -1), "dataset.split_seed", "greater than or equal"),
    (with_("device", "foo"), "device", "pattern"),
    (with_("dataset", []), "dataset", "at least 1"),
    (with_("threat", []), "threat", "at least 1"),
    (with_("threat", [{"eps": 0.1}, {"eps": -1}]), "threat[1].eps", "greater than 0"),
    (with_("methods/erm/space/train.lr", {"uniform": [0.01, 100]}), "train.lr", "10"),
    (
        with_("methods/erm/space/method.name", {"choice": ["erm", "pgd_at"]}),
        "methods.erm.space.method.name",
        "structure",
    ),
    (with_("methods/random/space/ipc", {"grid": [3, 3]}), "methods.random.space", "same name"),
    (
        with_(
            "dataset",
            [{"name": "synthetic-robust", "d": 20}, {"name": "synthetic-robust", "d": 50}],
        ),
        "dataset",
        "dataset[0] and dataset[1]",
    ),
    (
        with_(
            "dataset",
            [{"name": "synthetic-robust", "d": 20}, {"name": "synthetic-robust", "d": 50}],
        ),
        "dataset",
        "d: 20 vs 50",
    ),
    (with_("threat", [{"eps": 0.1}, {"eps": 0.10000001}]), "threat", "eps: 0.1 vs 0.10000001"),
    # a method's or dataset's own settings, named where the spec sets them, with their value
    (with_("methods", {"trades": {"space": {"beta": -1}}}), "methods.trades.space.beta", "got -1"),
    (
        with_("dataset", [{"name": "digits"}, {"name": "synthetic-robust", "p": 0.2}]),
        "dataset[1].p",
        "greater than 0.5",
    ),
    (with_("dataset", {"name": "synthetic-robust", "p": math.nan}), "dataset.p", "got nan"),
    (
        with_("dataset", [{"name": "digits"}, {"name": "synthetic-robust", "p": math.inf}]),
        "dataset[1].p",
        "got inf",
    ),
    # examples per class beyond any dataset's: refused before anything is allocated
    (
        with_("methods/random/space/ipc", {"grid": [1, 10**9]}),
        "methods.random.space.ipc",
        "at most 20000",
    ),
    *[
        (
            with_("methods", {m: {"space": {key: 10**9}}}),
            f"methods.{m}.space.{key}",
            "at most 20000",
        )
        for m, key in [
            ("dc", "ipc"),
            ("dm", "ipc"),
            ("rdl", "ipc"),
            ("rdl_gm", "ipc"),
            ("robust_features", "n_per_class"),
        ]
    ],
    (with_("eval/archs", ["nosuch"]), "eval.archs", "nosuch"),
    (
        with_("dataset", {"name": "synthetic-robust"}) | {"eval": {"archs": ["convnet"]}},
        "eval.archs",
        "image architecture",
    ),
    (with_("threat/autoattack", "plus"), "threat.autoattack", "standard"),
    ("name: a\nname: b\ndataset: {name: digits}\nmethods: {erm: {}}\n", "SPEC", "twice"),
    ("a: &x [1, 1]\nb: [*x, *x]\n", "SPEC", "aliases"),
    ("name: " + "[" * 400 + "]" * 400 + "\n", "SPEC", "deeper"),
    ("seed: " + "9" * 5000 + "\n", "SPEC", "cannot be read"),
    ("name: caf\xe9\n".encode("latin-1"), "SPEC", "UTF-8"),
    ("name: x\n".encode("utf-16"), "SPEC", "UTF-8"),
    (b"\x1f\x8b\x08\x00" + bytes(range(256)), "SPEC", "UTF-8"),
]


@pytest.mark.parametrize("spec,field,word", CASES, ids=[c[1] + "-" + c[2] for c in CASES])
def test_bad_input_exits_2_naming_the_field(tmp_path, spec, field, word):
    start = time.monotonic()
    res = validate(tmp_path, spec if isinstance(spec, (str, bytes)) else dump(spec))
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    message = " ".join(res.output.split())
    assert f"{field}:" in message or f"{field} " in message, message
    assert word in message, message
    assert time.monotonic() - start < 10


# ------------------------------------------------------------------ generated malformed specs

FIELDS = [
    "name",
    "trials",
    "repeats",
    "max_failures",
    "seed",
    "device",
    "dataset/name",
    "dataset/subset",
    "dataset/val_fraction",
    "dataset/split_seed",
    "dataset/root",
    "dataset/download",
    "threat/norm",
    "threat/eps",
    "threat/steps",
    "threat/alpha",
    "threat/restarts",
    "threat/loss",
    "threat/autoattack",
    "train/epochs",
    "train/batch_size",
    "train/lr",
    "train/momentum",
    "train/weight_decay",
    "train/schedule",
    "train/optimizer",
    "train/augment",
    "eval/archs",
    "eval/models_per_arch",
    "eval/epochs",
    "eval/lr",
    "eval/max_test",
    "eval/max_val",
    "eval/val_autoattack",
    "objective/metric",
    "objective/mode",
    "search/seed",
    "search/asha",
    "search/grace_period",
    "search/max_concurrent",
    "resources/cpu",
    "resources/gpu",
    "methods/erm/space/train.lr",
    "methods/random/space/ipc",
    "methods/erm/trials",
]

BAD_VALUES = st.one_of(
    st.sampled_from(
        [
            math.inf,
            -math.inf,
            math.nan,
            -1,
            0,
            -0.5,
            10**30,
            -(10**30),
            2**63,
            "",
            "nonsense",
            "8/0",
            None,
            [],
            {},
            [1, 2],
            {"a": 1},
            True,
        ]
    ),
    st.text(max_size=20),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(
        [
            {"uniform": [1, 0]},
            {"loguniform": [-1, 1]},
            {"int": [0.5, 2]},
            {"choice": []},
            {"grid": "x"},
            {"bogus": [1, 2]},
            {"uniform": [0, math.inf]},
        ]
    ),
)


def mutate(data) -> tuple[str, tuple[str, ...]]:
    """A spec with one field set to a (usually) bad value, a key added or removed; and the
    spec paths an error about it may be named by (the field, or what is under it)."""
    tree = copy.deepcopy(VALID)
    family = data.draw(st.sampled_from(["value", "value", "value", "unknown_key", "missing"]))
    if family == "missing":
        key = data.draw(st.sampled_from(["name", "dataset", "methods"]))
        del tree[key]
        return dump(tree), (key,)
    path = data.draw(st.sampled_from(FIELDS))
    *parents, last = path.split("/")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
    if family == "unknown_key":
        node[last + "_typo"] = 1
        return dump(tree), (".".join([*parents, last + "_typo"]),)
    node[last] = data.draw(BAD_VALUES)
    try:
        return dump(tree), (".".join(path.split("/")),)
    except (yaml.YAMLError, ValueError):  # a value YAML cannot represent: write it raw
        raw = dump(VALID).replace("trials: 2", f"trials: {data.draw(st.text(max_size=8))!r}")
        return raw, ("trials", "SPEC")


def names_field(message: str, paths: tuple[str, ...]) -> bool:
    """Whether the paragraph leads with one of `paths` (`threat.eps`), or a path under it
    (`eval.archs[0]`, `methods.erm.space.train.lr` for a space key)."""
    field = message.split(": ", 1)[0]
    return any(field == p or field.startswith((p + ".", p + "[")) for p in paths)


@settings(
    max_examples=500,
    deadline=None,
    derandomize=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
    ],
)
@given(data=st.data())
def test_generated_malformed_specs_never_crash(tmp_path, data):
    """Whatever the mutation, `harness validate` refuses the spec with HarnessInputError, one
    paragraph that leads with the mutated field's spec path: never another exception, and
    quickly. Draws that happen to be valid are discarded (`assume`), so the 500 examples are
    500 refused specs."""
    text, paths = mutate(data)
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    start = time.monotonic()
    try:
        load_sweep(str(path), (), False)
    except HarnessInputError as exc:
        message = str(exc)
        assert names_field(message, paths), (paths, message[:300])
        assert "\n" not in message
        assert len(message) < 2000, message[:300]
    else:
        assume(False)  # a valid spec: not one of the 500
    assert time.monotonic() - start < 10


# ------------------------------------------------------------------ flags, stores and outputs


def run_cli(*args: str):
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, " ".join(res.output.split())


@pytest.mark.parametrize(
    "uri,word",
    [
        ("bogus://x", "not a tracking store"),
        ("file:///tmp/store", "file stores"),
        ("relative/dir", "file stores"),
    ],
)
def test_unusable_tracking_uris_exit_2(uri, word):
    code, out = run_cli("leaderboard", "--tracking-uri", uri)
    assert code == 2 and "--tracking-uri" in out and word in out, out


def test_a_password_in_a_tracking_uri_is_never_printed():
    start = time.monotonic()
    code, out = run_cli("leaderboard", "--tracking-uri", "http://alice:s3cret@127.0.0.1:9")
    assert code == 2, out
    assert "s3cret" not in out and "***" in out, out
    assert time.monotonic() - start < 10  # a server that is down is reported quickly


def test_a_password_in_a_tracking_uri_is_masked_by_ui_and_after_a_sweep(tmp_path, monkeypatch):
    """`harness ui` refusing a server URI, and the lines a finished sweep prints (its
    browse hint), show the URI with its password masked. The sweep's Ray and store are
    stood in for: what is checked is what the command prints."""
    import harness.cli.sweeps as sweeps_cli
    import harness.sweep.driver
    import harness.tracking.store

    uri = "http://alice:s3cret@127.0.0.1:9"
    code, out = run_cli("ui", "--tracking-uri", uri)
    assert code == 2 and "s3cret" not in out and "***" in out, out

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(harness.tracking.store, "connect", lambda uri: object())
    monkeypatch.setattr(sweeps_cli, "arm_interrupt_watchdog", lambda path: None)
    monkeypatch.setattr(sweeps_cli, "show_leaderboard", lambda uri, experiment: None)
    monkeypatch.setattr(
        harness.sweep.driver,
        "run_sweep",
        lambda *a, **k: harness.sweep.driver.SweepOutcome(
            parent_run_id="p", experiment="ok", storage="ray_results", failed=0, variants=[]
        ),
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(dump(VALID))
    code, out = run_cli("sweep", str(spec), "--tracking-uri", uri)
    assert code == 0, out
    assert "harness ui --tracking-uri" in out and "s3cret" not in out and "***" in out, out


def foreign_store(path) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("create table notes (x)")


STORES = {
    "random-bytes": lambda path: path.write_bytes(bytes(range(256)) * 16),
    "sqlite-header-then-garbage": lambda path: path.write_bytes(
        b"SQLite format 3\x00" + bytes(range(256)) * 16
    ),
    "another-sqlite-database": foreign_store,
}


@pytest.mark.parametrize(
    "command",
    [["leaderboard"], ["run", "--from-run", "0123abcd"], ["sweep", "SPEC"], ["ui", "--port", "1"]],
)
@pytest.mark.parametrize("store", list(STORES))
def test_a_corrupt_or_foreign_tracking_store_exits_2_and_stays_untouched(
    tmp_path, monkeypatch, store, command
):
    """mlflow.db that is not an MLflow store (random bytes, a damaged database, another
    program's SQLite file): each command that opens the store exits 2 naming the file and
    the fix, and the file is left exactly as it was (MLflow would add its tables to a
    foreign database)."""
    import os

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("ui started a server"))
    path = tmp_path / "mlflow.db"
    STORES[store](path)
    before = path.read_bytes()
    (tmp_path / "spec.yaml").write_text(dump(VALID))
    args = [str(tmp_path / "spec.yaml") if a == "SPEC" else a for a in command]
    start = time.monotonic()
    code, out = run_cli(*args)
    assert code == 2, out
    assert "Traceback" not in out and "--tracking-uri" in out and "mlflow.db" in out, out
    assert path.read_bytes() == before
    assert time.monotonic() - start < 10


def test_bad_device_and_data_root_exit_2():
    code, out = run_cli(
        "run", "--dataset", "digits", "--method", "erm", "--smoke", "--device", "mps"
    )
    assert code == 2 and "--device" in out, out
    code, out = run_cli(
        "run",
        "--dataset",
        "digits",
        "--method",
        "erm",
        "--smoke",
        "--data-root",
        "~nosuchuser_harness/x",
    )
    assert code == 2 and "dataset.root" in out, out


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--dataset", "mnist", "--method", "erm", "--smoke"],
        ["run", "--dataset", "cifar10", "--method", "erm", "--smoke"],
        ["datasets"],
    ],
)
def test_a_data_root_the_file_system_refuses_exits_2(tmp_path, args):
    """A data root with a 300-character folder name: the file system refuses every path
    below it (ENAMETOOLONG); the dataset's file checks report it as a bad --data-root."""
    import errno
    import os

    code, out = run_cli(*args, "--data-root", str(tmp_path / ("a" * 300)))
    assert code == 2, out
    assert "Traceback" not in out and "--data-root" in out, out
    assert os.strerror(errno.ENAMETOOLONG) in out, out


def test_leaderboard_output_never_replaces_a_store_or_an_unforced_file(tmp_path, monkeypatch):
    import sqlite3

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "mlflow.db"
    sqlite3.connect(store).execute("create table t (x)").connection.commit()
    before = store.read_bytes()
    code, out = run_cli("leaderboard", "--output", str(store), "--force")
    assert code == 2 and "SQLite" in out, out
    assert store.read_bytes() == before  # the store is untouched
    other = tmp_path / "notes.md"
    other.write_text("mine")
    code, out = run_cli("leaderboard", "--output", str(other))
    assert code == 2 and "--force" in out, out
    assert other.read_text() == "mine"
