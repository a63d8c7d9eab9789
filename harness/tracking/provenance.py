"""Where a number came from: package versions and the state of the harness's source checkout.

Every trial run is tagged with these (see `harness.tracking.writer`): `git_sha`, `git_dirty`
(`true`, `false`, or `unknown` when git or the checkout is absent), `torch_version`,
`ray_version`, `mlflow_version`, `harness_version`.
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

# A file git must track for the checkout to count as the harness's own: an installed copy
# inside some other repository (a venv in a project's tree) must not report that repo's sha.
PACKAGE_FILE = Path(__file__).resolve().parents[1] / "__init__.py"  # harness/__init__.py


def _git(args: list[str], cwd: Path) -> str | None:
    """Stdout of `git ARGS` in `cwd`; None when git is missing, slow, or fails."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_tags(source: Path = PACKAGE_FILE) -> dict[str, str]:
    """`git_sha` and `git_dirty` of the repository that tracks `source`, else both unknown.

    Dirty means tracked files differ from the commit or untracked, not-ignored files exist
    (a new method file changes what runs as much as an edit does)."""
    source = Path(source).resolve()
    tracked = _git(["ls-files", "--error-unmatch", source.name], source.parent) is not None
    sha = _git(["rev-parse", "HEAD"], source.parent) if tracked else None
    status = _git(["status", "--porcelain"], source.parent) if sha else None
    if sha is None or status is None:
        return {"git_sha": "unknown", "git_dirty": "unknown"}
    return {"git_sha": sha.strip(), "git_dirty": "true" if status.strip() else "false"}


def version_tags() -> dict[str, str]:
    """Versions of the packages that decide a trial's numbers; torch's with its build
    suffix (+cpu, +cu121), which package metadata leaves out."""
    import torch

    import harness

    tags = {"torch_version": torch.__version__, "harness_version": harness.__version__}
    for package in ("ray", "mlflow"):
        try:
            tags[f"{package}_version"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            tags[f"{package}_version"] = "unknown"
    return tags
