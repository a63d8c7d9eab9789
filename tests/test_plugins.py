"""Where methods come from: the built-in package `harness.methods`, whose name no user folder
can shadow, and plugins (`HARNESS_PLUGINS`, and `harness.methods` entry points of installed
distributions). Each case runs the CLI in a fresh interpreter, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILT_IN = ["dc", "dm", "erm", "fast_at", "pgd_at", "random", "rdl", "rdl_gm", "robust_features",
            "trades"]


def harness_cli(*args: str, cwd: Path, path: list[Path] = (), timeout: int = 120,
                **env: str) -> subprocess.CompletedProcess:
    """`python -m harness.cli ARGS` from `cwd`, with `path` ahead of the checkout on PYTHONPATH
    (`-m` also puts `cwd` first on sys.path, as a user's project folder would be)."""
    full_env = {k: v for k, v in os.environ.items() if k != "HARNESS_PLUGINS"}
    full_env.update(env, PYTHONPATH=os.pathsep.join(str(p) for p in [*path, REPO]))
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


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
    assert listed(result.stdout) == BUILT_IN, result.stdout
