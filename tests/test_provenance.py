"""The provenance tags every trial run carries: git sha, dirty flag, versions."""

from __future__ import annotations

import subprocess

from harness.tracking.provenance import git_tags, version_tags


def git(cwd, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_git_tags_say_clean_then_dirty(tmp_path):
    git(tmp_path, "init", "-q")
    source = tmp_path / "mod.py"
    source.write_text("x = 1\n")
    git(tmp_path, "add", "mod.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    assert git_tags(source) == {"git_sha": git(tmp_path, "rev-parse", "HEAD"), "git_dirty": "false"}
    source.write_text("x = 2\n")
    assert git_tags(source)["git_dirty"] == "true"
    source.write_text("x = 1\n")
    (tmp_path / "new_method.py").write_text("")  # untracked code changes what runs too
    assert git_tags(source)["git_dirty"] == "true"


def test_git_tags_unknown_outside_a_repo_or_without_git(tmp_path, monkeypatch):
    source = tmp_path / "mod.py"
    source.write_text("")
    unknown = {"git_sha": "unknown", "git_dirty": "unknown"}
    assert git_tags(source) == unknown  # tmp_path is in no repository
    git(tmp_path, "init", "-q")
    assert git_tags(source) == unknown  # a repository that does not track the file
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert git_tags(source) == unknown


def test_version_tags_name_every_package():
    import harness

    tags = version_tags()
    assert set(tags) == {"torch_version", "ray_version", "mlflow_version", "harness_version"}
    assert tags["harness_version"] == harness.__version__
    assert "unknown" not in tags.values()
