"""Leaderboard, report and `harness ui` on MLflow stores written the way the sweep writes them.

The store is built with `harness.tracking.Tracker` from the plain list `TRIALS`; every expected
number is recomputed here straight from that list (numpy, its own selection rule), never from
what the store or the leaderboard returns.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.errors import HarnessInputError
from harness.leaderboard import build_records, load_records, render
from harness.plots import pareto_front
from harness.tracking import RunData, Tracker, connect

SWEEP = "lb-test"
ARCHS = ("mlp", "convnet")
GROUP_A = ("synthetic-robust", "linf", 0.2828)
GROUP_B = ("synthetic-robust", "l2", 1.0)
GROUP_C = ("mnist", "linf", 0.3)


def trial(variant, phase, cfg, seed, val=None, clean=None, pgd=None, aa=None, work=5.0,
          status="FINISHED", group=GROUP_A):
    """One trial as the test knows it; `cfg` holds the tuned settings (dotted spec keys)."""
    return dict(variant=variant, method=variant.split("[")[0], phase=phase, cfg=cfg, seed=seed,
                val=val, clean=clean, pgd=pgd, aa=aa, work=work, status=status, group=group)


TRIALS = [
    # rdl[ipc=10]: r10a is best on validation, r10b on test (must lose), r10c ties r10a on
    # validation with more work (must lose); a repeat of r10b's config must not be pooled; a
    # RUNNING trial with a higher validation score is neither used nor counted as failed.
    trial("rdl[ipc=10]", "search", {"method.ipc": 10, "train.lr": 0.1}, 0, .60, .80, .55, .52),
    trial("rdl[ipc=10]", "search", {"method.ipc": 10, "train.lr": 0.3}, 0, .50, .85, .70, .68),
    trial("rdl[ipc=10]", "search", {"method.ipc": 10, "train.lr": 0.2}, 0, .60, .81, .56, .53,
          work=9.0),
    trial("rdl[ipc=10]", "repeat", {"method.ipc": 10, "train.lr": 0.1}, 1, .58, .78, .53, .50),
    trial("rdl[ipc=10]", "repeat", {"method.ipc": 10, "train.lr": 0.1}, 2, .61, .82, .57, .55),
    trial("rdl[ipc=10]", "repeat", {"method.ipc": 10, "train.lr": 0.3}, 1, .49, .90, .75, .74),
    trial("rdl[ipc=10]", "search", {"method.ipc": 10, "train.lr": 0.05}, 0, .90, .90, .90, .90,
          status="RUNNING"),
    # rdl[ipc=50]: a single run (n=1, std 0).
    trial("rdl[ipc=50]", "search", {"method.ipc": 50, "train.lr": 0.1}, 0, .62, .83, .60, .58),
    # pgd_at: two failed trials (one search, one repeat).
    trial("pgd_at", "search", {"train.lr": 0.05}, 0, .55, .75, .50, .47, work=40.0),
    trial("pgd_at", "search", {"train.lr": 0.1}, 0, status="FAILED"),
    trial("pgd_at", "search", {"train.lr": 0.01}, 0, .40, .70, .42, .40, work=40.0),
    trial("pgd_at", "repeat", {"train.lr": 0.05}, 1, .54, .76, .49, .45, work=41.0),
    trial("pgd_at", "repeat", {"train.lr": 0.05}, 2, status="FAILED"),
    # erm: AutoAttack off, so ranked by PGD (above dm's AutoAttack score).
    trial("erm", "search", {"train.lr": 0.05}, 0, .30, .99, .31, None, work=1.0),
    trial("erm", "repeat", {"train.lr": 0.05}, 1, .29, .98, .33, None, work=1.0),
    # dm[ipc=10]: a full tie on validation and work; the earlier run wins.
    trial("dm[ipc=10]", "search", {"method.ipc": 10, "train.lr": 0.1}, 0, .30, .60, .30, .28, 3.0),
    trial("dm[ipc=10]", "search", {"method.ipc": 10, "train.lr": 0.2}, 0, .30, .65, .35, .33, 3.0),
    trial("dm[ipc=10]", "repeat", {"method.ipc": 10, "train.lr": 0.2}, 1, .31, .66, .36, .34, 3.0),
    # Other threats and datasets are separate groups.
    trial("erm", "search", {"train.lr": 0.05}, 0, .20, .97, .21, None, work=1.0, group=GROUP_B),
    trial("pgd_at", "search", {"train.lr": 0.05}, 0, .45, .72, .44, .41, work=40.0, group=GROUP_B),
    trial("rdl[ipc=10]", "search", {"method.ipc": 10, "train.lr": 0.1}, 0, .70, .95, .66, .64,
          group=GROUP_C),
]


def params_of(t: dict) -> dict:
    dataset, norm, eps = t["group"]
    return {"method": t["method"], "method.name": t["method"], "dataset": dataset,
            "dataset.name": dataset, "threat.norm": norm, "threat.eps": eps,
            "threat.autoattack": t["aa"] is not None, "eval.models_per_arch": 2,
            "seed": t["seed"], **t["cfg"]}


def arch_offset(i: int) -> float:
    return 0.02 * (1 if i == 0 else -1)


def metrics_of(t: dict) -> dict:
    """The metrics the sweep logs; per-arch scores sit symmetrically around the trial's."""
    out = {"val_clean_acc": t["clean"], "val_robust_acc": t["val"], "clean_acc": t["clean"],
           "robust_acc": t["pgd"], "learn_seconds": 10 * t["work"], "train_seconds": 2.0,
           "learn_work_epochs": t["work"] - 1.0, "train_work_epochs": 1.0 + t["work"] / 10,
           "work_epochs": t["work"], "dataset_size": 20.0 * t["cfg"].get("method.ipc", 50)}
    if t["aa"] is not None:
        out["autoattack_acc"] = t["aa"]
    for i, arch in enumerate(ARCHS):
        d = arch_offset(i)
        out.update({f"arch.{arch}.clean_acc": t["clean"] + d,
                    f"arch.{arch}.robust_acc": t["pgd"] + d, f"arch.{arch}.n": 2})
        if t["aa"] is not None:
            out[f"arch.{arch}.autoattack_acc"] = t["aa"] + d
    return out


def write_store(uri: str) -> tuple[Tracker, list[str]]:
    tracker = Tracker(connect(uri), SWEEP)
    run_ids = []
    for i, t in enumerate(TRIALS):
        time.sleep(0.003)  # distinct start times, so "earlier" is well defined
        tags = {"method": t["method"], "variant": t["variant"], "dataset": t["group"][0],
                "phase": t["phase"], "device": "cpu"}
        run_id = tracker.trial_run(f"trial_{i:03d}", params_of(t), tags)
        if t["status"] == "FINISHED":
            tracker.log_metrics(run_id, metrics_of(t), step=0)
        if t["status"] != "RUNNING":
            tracker.finish(run_id, ok=t["status"] == "FINISHED")
        run_ids.append(run_id)
    tracker.finish_sweep()
    return tracker, run_ids


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    uri = f"sqlite:///{path}"
    with pytest.MonkeyPatch.context() as mp:  # skip importing ray just to tag its version
        mp.setattr("harness.tracking.version_tags", lambda: {"torch_version": "test"})
        tracker, run_ids = write_store(uri)
    return {"uri": uri, "run_ids": run_ids, "parent": tracker.parent_run_id, "dir": path.parent}


@pytest.fixture(scope="module")
def records(store):
    return load_records(store["uri"], experiment=SWEEP)


# ----------------------------------------------------------------- independent recomputation


def expected_rows() -> dict[tuple, dict]:
    """Per (group, variant): the selected trials and their statistics, from TRIALS alone."""
    out = {}
    cells = {(t["group"], t["variant"]) for t in TRIALS}
    for group, variant in cells:
        mine = [(i, t) for i, t in enumerate(TRIALS)
                if (t["group"], t["variant"]) == (group, variant)]
        done = [(i, t) for i, t in mine if t["status"] == "FINISHED"]
        # highest val; then least work; then created first (larger -i)
        best_i, best = max(((i, t) for i, t in done if t["phase"] == "search"),
                           key=lambda it: (it[1]["val"], -it[1]["work"], -it[0]))
        chosen = [best_i] + [i for i, t in done
                             if t["phase"] == "repeat" and t["cfg"] == best["cfg"]]
        out[(group, variant)] = stats([TRIALS[i] for i in chosen], chosen,
                                      failed=sum(t["status"] == "FAILED" for _, t in mine))
    return out


def stats(chosen: list[dict], indices: list[int], failed: int) -> dict:
    def mean_std(key):
        values = np.array([t[key] for t in chosen if t[key] is not None], dtype=float)
        if values.size == 0:
            return None, None
        return values.mean(), (values.std(ddof=1) if values.size > 1 else 0.0)

    work = np.array([t["work"] for t in chosen])
    aa = mean_std("aa")
    score = aa[0] if aa[0] is not None else mean_std("pgd")[0]
    train_work = (1.0 + work / 10).mean()
    return {"indices": indices, "n": len(chosen), "failed": failed, "clean": mean_std("clean"),
            "pgd": mean_std("pgd"), "aa": aa, "score": score, "val": chosen[0]["val"],
            "learn_s": (10 * work).mean(), "learn_ep": (work - 1).mean(),
            "train_ep": train_work, "per_ep": score / train_work,
            "size": 20.0 * chosen[0]["cfg"].get("method.ipc", 50),
            "arch_robust": {a: np.mean([t["pgd"] + arch_offset(k) for t in chosen])
                            for k, a in enumerate(ARCHS)}}


def by_key(records) -> dict:
    return {((r.dataset, r.threat_norm, r.threat_eps), r.variant): r for r in records}


def approx(value):
    return None if value is None else pytest.approx(value, abs=1e-9)


def test_numbers_equal_recomputation(store, records):
    expected = expected_rows()
    got = by_key(records)
    assert set(got) == set(expected)
    for key, exp in expected.items():
        r = got[key]
        assert r.run_ids == tuple(store["run_ids"][i] for i in exp["indices"]), key
        assert (r.n, r.failed) == (exp["n"], exp["failed"]), key
        assert (r.clean_acc, r.clean_acc_std) == (approx(exp["clean"][0]), approx(exp["clean"][1]))
        assert (r.robust_acc, r.robust_acc_std) == (approx(exp["pgd"][0]), approx(exp["pgd"][1]))
        assert (r.autoattack_acc, r.autoattack_acc_std) == (approx(exp["aa"][0]),
                                                             approx(exp["aa"][1]))
        assert r.score == approx(exp["score"]) and r.val_robust_acc == approx(exp["val"])
        assert r.learn_seconds == approx(exp["learn_s"])
        assert r.learn_work_epochs == approx(exp["learn_ep"])
        assert r.train_work_epochs == approx(exp["train_ep"]) and r.train_seconds == approx(2.0)
        assert r.score_per_train_epoch == approx(exp["per_ep"])
        assert r.dataset_size == approx(exp["size"])
        assert {a.arch: a.robust_acc for a in r.per_arch} == {
            a: approx(v) for a, v in exp["arch_robust"].items()}
        assert all(a.n == 2 * exp["n"] for a in r.per_arch)


def test_best_configuration_is_chosen_on_validation_not_test(store, records):
    row = by_key(records)[(GROUP_A, "rdl[ipc=10]")]
    test_best = store["run_ids"][1]  # highest test PGD and AutoAttack, lower validation
    assert row.best_run_id == store["run_ids"][0] and test_best not in row.run_ids
    assert store["run_ids"][5] not in row.run_ids  # a repeat of the test-best configuration
    assert row.config == {"train.lr": "0.1"} and row.size == "ipc=10"


def test_ties_break_on_work_then_start_time(store, records):
    rows = by_key(records)
    assert rows[(GROUP_A, "rdl[ipc=10]")].best_run_id == store["run_ids"][0]  # less work than [2]
    assert rows[(GROUP_A, "dm[ipc=10]")].best_run_id == store["run_ids"][15]  # earlier than [16]
    assert build_records(reversed(runs_as_data(store))) == records


def runs_as_data(store) -> list[RunData]:
    from harness.tracking import load_trial_runs

    return load_trial_runs(store["uri"], sweep_run_id=store["parent"])


def test_failed_missing_autoattack_and_single_run(records):
    rows = by_key(records)
    assert rows[(GROUP_A, "pgd_at")].failed == 2 and rows[(GROUP_A, "rdl[ipc=10]")].failed == 0
    erm = rows[(GROUP_A, "erm")]
    assert erm.autoattack_acc is None and erm.autoattack_n == 0 and erm.score_by == "pgd"
    assert all(a.autoattack_acc is None for a in erm.per_arch)
    single = rows[(GROUP_A, "rdl[ipc=50]")]
    assert single.n == 1
    assert (single.clean_acc_std, single.robust_acc_std, single.autoattack_acc_std) == (0, 0, 0)


def test_ranking_by_autoattack_else_pgd(records):
    expected = expected_rows()
    for group in (GROUP_A, GROUP_B, GROUP_C):
        mine = [r for r in records if (r.dataset, r.threat_norm, r.threat_eps) == group]
        want = sorted((v for g, v in expected if g == group),
                      key=lambda v: -expected[(group, v)]["score"])
        assert [r.variant for r in mine] == want
        assert [r.rank for r in mine] == list(range(1, len(mine) + 1))
    linf = [r.variant for r in records if (r.dataset, r.threat_norm) == GROUP_A[:2]]
    assert linf == ["rdl[ipc=50]", "rdl[ipc=10]", "pgd_at", "erm", "dm[ipc=10]"]


def test_sweep_id_selects_the_same_runs(store, records):
    assert load_records(store["uri"], sweep_run_id=store["parent"]) == records
    assert load_records(store["uri"]) == records  # the only sweep in the store


def test_pareto_front():
    points = [(0.9, 0.1), (0.5, 0.5), (0.4, 0.4), (0.2, 0.6), (0.5, 0.5)]
    assert pareto_front(points) == [3, 1, 4, 0]


def test_all_failed_variant_has_no_row():
    run = RunData("r1", "0", "FAILED", 0, {"variant": "erm", "phase": "search"},
                  {"threat.norm": "linf", "threat.eps": "0.1"}, {})
    assert build_records([run]) == []


# ------------------------------------------------------------------------------ formats, CLI


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_markdown_format(store):
    result = cli("leaderboard", "--experiment", SWEEP, "--tracking-uri", store["uri"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith(f"# Leaderboard: {SWEEP}\n")
    assert "## synthetic-robust · Linf eps 0.2828" in text and "## mnist · Linf eps 0.3" in text
    assert "| # | method | size | clean | PGD | AutoAttack |" in text
    assert "| 1 | rdl[ipc=50] | ipc=50 | 0.830 ± 0.000 | 0.600 ± 0.000 | 0.580 ± 0.000 |" in text
    assert re.search(r"\| erm \| 1000 \| 0\.985 ± 0\.007 \| 0\.320 ± 0\.014 \| off \|", text)


def test_csv_format(store, records, tmp_path):
    out = tmp_path / "board.csv"
    result = cli("leaderboard", "--sweep", store["parent"], "--tracking-uri", store["uri"],
                 "--format", "csv", "--output", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == len(records)
    for row, rec in zip(rows, records):
        assert (row["dataset"], row["variant"], int(row["rank"])) == (
            rec.dataset, rec.variant, rec.rank)
        assert float(row["robust_acc"]) == pytest.approx(rec.robust_acc)
        aa = rec.autoattack_acc
        assert row["autoattack_acc"] == ("" if aa is None else str(aa))
        assert float(row["arch.mlp.robust_acc"]) == pytest.approx(rec.per_arch[1].robust_acc)
        assert row["run_ids"].split(";") == list(rec.run_ids)


def test_json_format(store, records):
    result = cli("leaderboard", "--experiment", SWEEP, "--tracking-uri", store["uri"],
                 "--format", "json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)["records"]
    assert len(got) == len(records)
    for row, rec in zip(got, records):
        assert {"dataset", "method", "clean_acc", "robust_acc", "autoattack_acc"} <= set(row)
        assert (row["dataset"], row["method"], row["clean_acc"], row["autoattack_acc"]) == (
            rec.dataset, rec.method, rec.clean_acc, rec.autoattack_acc)


@pytest.fixture(scope="module")
def html_report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "board.html"
    result = cli("leaderboard", "--experiment", SWEEP, "--tracking-uri", store["uri"],
                 "--format", "html", "--output", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_html_is_self_contained(html_report, records):
    text = html_report.read_text()
    assert text.count("<table class=\"sortable\"") == 3
    assert text.count("<tbody>") == 3 and text.count("<tr>") == len(records) + 3
    assert text.count("data:image/png;base64,") == 9  # 3 plots x 3 groups
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"(?!data:)", text)


CHROMIUM = shutil.which("chromium") or shutil.which("/usr/bin/chromium")


def chromium_dom(url: str, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM after scripts ran, and every console message chromium logged."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chromium'}", "--enable-logging=stderr", "--v=0",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def column(dom: str, table: int, key_index: int) -> list[str]:
    body = dom.split("<tbody>")[table + 1].split("</tbody>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    return [re.findall(r'data-sort="([^"]*)"', row)[key_index] for row in rows]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_html_renders_in_chromium_without_console_errors(html_report, tmp_path):
    # Sorting on load by clean accuracy, ascending, through the URL's #sort= also checks the script.
    dom, console = chromium_dom(html_report.as_uri() + "#sort=clean_acc-asc", tmp_path)
    assert console == []
    assert 'data-sortable="ready"' in dom
    groups = [[float(v) for v in column(dom, i, 3)] for i in range(3)]  # mnist, l2, linf
    assert [len(g) for g in groups] == [1, 2, 5] and all(g == sorted(g) for g in groups)
    assert 'aria-sort="ascending"' in dom


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_chromium_check_sees_console_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, console = chromium_dom(page.as_uri(), tmp_path)
    assert any("undefinedFunction" in line for line in console)


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, message", [
    (["--experiment", "nope"], "no experiment named 'nope'"),
    (["--sweep", "0" * 32], "no run"),
    (["--experiment", SWEEP, "--sweep", "x"], "not both"),
])
def test_bad_selection_exits_2(store, args, message):
    result = cli("leaderboard", "--tracking-uri", store["uri"], *args)
    assert result.exit_code == 2 and message in result.output + (result.stderr or "")
    assert "Traceback" not in result.output


def test_trial_run_id_is_not_a_sweep(store):
    result = cli("leaderboard", "--tracking-uri", store["uri"], "--sweep", store["run_ids"][0])
    assert result.exit_code == 2 and "not a sweep" in result.output + result.stderr


def test_missing_store_and_bad_format_exit_2(tmp_path):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    result = cli("leaderboard", "--tracking-uri", missing)
    assert result.exit_code == 2 and "does not exist" in result.output + result.stderr
    assert not (tmp_path / "none.db").exists()
    assert cli("leaderboard", "--format", "xml").exit_code == 2
    with pytest.raises(HarnessInputError, match="unknown format"):
        render([], "xml")
    assert cli("ui", "--tracking-uri", missing).exit_code == 2


# ---------------------------------------------------------------------------------------- ui


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_store_on_localhost(store):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "ui", "--tracking-uri", store["uri"],
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        cwd=store["dir"],
    )
    try:
        line = proc.stdout.readline()
        assert f"at http://127.0.0.1:{port} " in line
        base = f"http://127.0.0.1:{port}"
        assert wait_for_http(f"{base}/health", proc, deadline=time.monotonic() + 90) == "OK"
        body = get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={SWEEP}", 30)
        assert json.loads(body)["experiment"]["name"] == SWEEP
    finally:
        stop_group(proc)


def get(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def wait_for_http(url: str, proc: subprocess.Popen, deadline: float) -> str:
    while time.monotonic() < deadline:
        assert proc.poll() is None, "harness ui exited early"
        try:
            return get(url, timeout=10)
        except OSError:  # refused while starting, or slow to answer its first request
            time.sleep(0.5)
    raise AssertionError(f"no HTTP answer from {url}")


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (all started by this test), SIGKILL if it lingers."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@pytest.mark.parametrize(("norm", "eps", "text"), [
    ("linf", 8 / 255, "Linf eps 8/255"),  # a long decimal: shown as written in specs
    ("linf", 0.2, "Linf eps 0.2"),  # 51/255, but the decimal is what the spec said
    ("linf", 0.8, "Linf eps 0.8"),
    ("l2", 0.5, "L2 eps 0.5"),
    ("linf", 0.0123456, "Linf eps 0.01235"),
    ("linf", None, "Linf eps ?"),
])
def test_threat_titles(norm, eps, text):
    from harness.report import threat_text

    assert threat_text(norm, eps) == text
