"""Where methods come from: the built-in package `harness.methods`, whose name no user folder
can shadow, and plugins (`HARNESS_PLUGINS`, and `harness.methods` entry points of installed
distributions). The end-to-end cases run the CLI in a fresh interpreter, as a user would; the
finer checks of an entry point run in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import pytest

from harness.errors import HarnessInputError
from harness.methods import METHODS
from harness.methods._plugins import load_entry_point

REPO = Path(__file__).resolve().parents[1]
BUILT_IN = [
    "dc",
    "dm",
    "erm",
    "fast_at",
    "pgd_at",
    "random",
    "rdl",
    "rdl_gm",
    "robust_features",
    "trades",
]


def harness_cli(
    *args: str, cwd: Path, path: Sequence[Path] = (), timeout: int = 120, **env: str
) -> subprocess.CompletedProcess:
    """`python -m harness.cli ARGS` from `cwd`, with `path` ahead of the checkout on PYTHONPATH
    (`-m` also puts `cwd` first on sys.path, as a user's project folder would be)."""
    full_env = {k: v for k, v in os.environ.items() if k != "HARNESS_PLUGINS"}
    full_env.update(env, PYTHONPATH=os.pathsep.join(str(p) for p in [*path, REPO]))
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def listed(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines() if line.strip()]


def test_a_users_own_methods_folder_does_not_shadow_the_built_in_methods(tmp_path):
    """Before the methods were `harness.methods`, an empty `methods/__init__.py` in the working
    directory (or on PYTHONPATH) made every command fail with `cannot import name 'METHODS'`."""
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "__init__.py").write_text("")
    (tmp_path / "methods" / "base.py").write_text("raise RuntimeError('the user module ran')\n")
    result = harness_cli("methods", cwd=tmp_path, path=[tmp_path])
    assert result.returncode == 0, result.stderr
    assert set(listed(result.stdout)) >= set(BUILT_IN), result.stdout


def test_a_checkout_finds_its_methods_without_an_install(tmp_path):
    """With no site-packages at all (`-S`: neither a regular nor an editable install), the
    checkout on PYTHONPATH still resolves `harness.methods` to its own `methods/` folder."""
    code = "import importlib.util as u; print(u.find_spec('harness.methods').origin)"
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=tmp_path,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == REPO / "methods" / "__init__.py"


FIND = (
    "import importlib.util as u; print(u.find_spec('harness.methods').origin); "
    "print(u.find_spec('harness.tests'), u.find_spec('harness.benchmarks'))"
)


def find_in_fresh_interpreter(path: Path, cwd: Path, *flags: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, *flags, "-c", FIND],
        cwd=cwd,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")


@pytest.mark.parametrize("flags", [("-S",), ()], ids=["no-site-packages", "with-site-packages"])
def test_a_checkout_maps_only_its_methods_folder_into_the_package(tmp_path, flags):
    """Only `harness.methods` comes from the checkout's top level, so its other folders
    (`tests`, `benchmarks`) are no subpackages; with site-packages, an install of another
    checkout in the environment does not take its place."""
    import importlib.util

    import harness.methods  # this process: the package imports, from the checkout

    assert Path(harness.methods.__file__) == REPO / "methods" / "__init__.py"
    assert importlib.util.find_spec("harness.tests") is None
    origin, missing, _ = find_in_fresh_interpreter(REPO, tmp_path, *flags)
    assert Path(origin) == REPO / "methods" / "__init__.py"
    assert missing == "None None"


def test_an_installed_layout_finds_its_own_methods(tmp_path):
    """A wheel (pyproject's package-dir) puts `methods/` inside `harness/`: found there."""
    import shutil

    site = tmp_path / "site"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "harness", site / "harness", ignore=ignore)
    shutil.copytree(REPO / "methods", site / "harness" / "methods", ignore=ignore)
    origin, missing, _ = find_in_fresh_interpreter(site, tmp_path, "-S")
    assert Path(origin) == site / "harness" / "methods" / "__init__.py"
    assert missing == "None None"


# ----------------------------------------------------------------------------- entry points

PLAIN = '''
from harness.methods import ModelMethod
from harness.methods import natural_loss


class Plain(ModelMethod):
    """Natural training, declared by an installed distribution's entry point."""

    def loss_step(self, ctx):
        return natural_loss


def helper():
    return None
'''

DECORATED = '''
from harness.methods import ModelMethod, register_method
from harness.methods import natural_loss


@register_method("{name}")
class Decorated(ModelMethod):
    """Natural training, registered by its decorator when its module is imported."""

    def loss_step(self, ctx):
        return natural_loss
'''


def install(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Lay out a distribution the way an install leaves it in site-packages, reduced to what
    importlib.metadata reads (METADATA and entry_points.txt in its .dist-info folder), beside
    its modules; with `site` on sys.path it is installed. Returns the .dist-info folder."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[harness.methods]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    )
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source)
    return info


def test_installed_entry_points_are_listed_and_run_beside_harness_plugins(tmp_path):
    site = tmp_path / "site"
    install(
        site,
        "harness-demo-plugin",
        {"plain": "demo_plain:Plain", "extras": "demo_decorated"},
        {"demo_plain": PLAIN, "demo_decorated": DECORATED.format(name="decorated")},
    )
    (tmp_path / "own.py").write_text(DECORATED.format(name="from_env"))
    listing = harness_cli("methods", cwd=tmp_path, path=[site, tmp_path], HARNESS_PLUGINS="own")
    assert listing.returncode == 0, listing.stderr
    names = listed(listing.stdout)
    assert set(names) >= set(BUILT_IN) | {"plain", "decorated", "from_env"}, names
    assert "declared by an installed distribution's entry point" in listing.stdout

    run = harness_cli(
        "run",
        "--method",
        "plain",
        "--dataset",
        "digits",
        "--smoke",
        "--json",
        "--device",
        "cpu",
        "--arch",
        "mlp",
        "--set",
        "threat.autoattack=off",
        cwd=tmp_path,
        path=[site],
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["method"] == "plain" and out["kind"] == "model" and out["dataset"] == "digits"
    assert 0.0 <= out["robust_acc"] <= out["clean_acc"] <= 1.0


BROKEN = {
    "syntax": ("demo_bad:Plain", "def broken(:\n", "syntax error"),
    "raises": (
        "demo_bad:Plain",
        "raise RuntimeError('plugin exploded on import')\n",
        "raised RuntimeError on import (plugin exploded on import)",
    ),
    "missing": ("demo_absent:Plain", None, "cannot be imported"),
    "wrong type": ("demo_bad:helper", PLAIN, "points at a function, not a method"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_entry_point_exits_2_naming_it_and_its_distribution(tmp_path, case):
    value, source, summary = BROKEN[case]
    site = tmp_path / "site"
    install(site, "harness-bad-plugin", {"oops": value}, {"demo_bad": source} if source else {})
    result = harness_cli("methods", cwd=tmp_path, path=[site])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    err = " ".join(result.stderr.split())
    assert f"entry point 'oops = {value}' (group harness.methods)" in err, err
    assert "distribution harness-bad-plugin 1.0" in err and summary in err, err
    assert "pip uninstall harness-bad-plugin" in err, err


def test_entry_point_taking_a_built_in_name_exits_2(tmp_path):
    site = tmp_path / "site"
    install(site, "harness-bad-plugin", {"erm": "demo_plain:Plain"}, {"demo_plain": PLAIN})
    result = harness_cli(
        "run", "--method", "erm", "--dataset", "digits", "--smoke", cwd=tmp_path, path=[site]
    )
    assert result.returncode == 2, result.stdout + result.stderr
    err = " ".join(result.stderr.split())
    assert "Traceback" not in err and "harness-bad-plugin" in err, err
    assert "names the method 'erm', which is already taken by a built-in method" in err, err


# The checks on an entry point's value and target, in this process (each CLI start costs seconds).

SUBCLASS = '''
from harness.methods.pgd_at import PGDAT


class MyPGD(PGDAT):
    """PGD adversarial training under another name."""
'''


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    """A folder on sys.path to install plugins into. The registry and the module table are put
    back afterwards: a plugin may register a method before it is refused."""
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    yield site
    for name in [m for m in sys.modules if m.startswith("demo_")]:
        del sys.modules[name]


def load_only(site: Path, name: str, value: str, dist: str = "harness-demo-plugin") -> None:
    info = install(
        site,
        dist,
        {name: value},
        {
            "demo_plain": PLAIN,
            "demo_decorated": DECORATED.format(name="decorated"),
            "demo_subclass": SUBCLASS,
        },
    )
    (ep,) = metadata.PathDistribution(info).entry_points
    load_entry_point(ep)


REFUSED = [
    ("plain", "demo-plain:Plain", "is not of the form 'module' or 'module:Class'"),
    ("plain", "demo_plain:Plain extra", "is not of the form"),
    ("my.method", "demo_plain:Plain", "names the method 'my.method', which is not a method name"),
    ("plain", "demo_plain:Nope", "names 'Nope', which module 'demo_plain' does not define"),
    ("plain", "demo_plain", "registered no method"),
    ("base", "harness.methods:ModelMethod", "points at the class ModelMethod, not a method"),
    (
        "other",
        "demo_decorated:Decorated",
        "names the method 'other', but its class is registered as 'decorated'",
    ),
]


@pytest.mark.parametrize("name, value, summary", REFUSED)
def test_entry_point_checks(plugin_site, name, value, summary):
    with pytest.raises(HarnessInputError) as err:
        load_only(plugin_site, name, value)
    assert summary in str(err.value)
    assert "of distribution harness-demo-plugin 1.0" in str(err.value)


def test_entry_point_to_a_decorated_class_or_a_subclass_of_a_built_in(plugin_site):
    load_only(plugin_site, "decorated", "demo_decorated:Decorated")  # its decorator's own name
    assert METHODS.get("decorated").__module__ == "demo_decorated"
    # a subclass inherits the built-in's name; registering it must not rename the built-in
    load_only(plugin_site, "my_pgd", "demo_subclass:MyPGD", dist="harness-other-plugin")
    assert METHODS.get("my_pgd").name == "my_pgd" and METHODS.get("pgd_at").name == "pgd_at"
