"""What a fresh trial worker pays before its work: every trial of a sweep runs in a new
process, so a heavy import a trial does not need is paid once per trial (the demo runs 24).
The driver's MLflow, scikit-learn (the digits come from its bundled file) and torchvision
(the learned set's image grid is written with Pillow) stay out of a trial's process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from harness.results.images import PAD, save_grid

TRIAL = """
import json, sys
import harness.sweep.experiment  # what the worker unpickles the trial function from
from harness.spec.schema import build_sweep_spec
from harness.spec.plan import make_plan, with_resolved
from harness.sweep.trial import run_sweep_trial

spec = build_sweep_spec({"name": "lean", "dataset": {"name": "digits", "subset": 20},
                         "methods": {"random": {"space": {"ipc": 2}}}})
variant = make_plan(spec, smoke=True)[0]
files = []
def report(metrics, folder):
    if folder is not None and "record" in metrics:
        files.extend(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
run_sweep_trial(with_resolved(variant, {}), variant=variant, objective="val_robust_acc",
                smoke=True, report=report, probe=False)
heavy = [m for m in ("mlflow", "sklearn", "torchvision") if m in sys.modules]
print(json.dumps({"heavy": heavy, "files": sorted(files)}))
"""


def test_a_trial_worker_imports_neither_mlflow_nor_sklearn_nor_torchvision():
    out = subprocess.run(
        [sys.executable, "-c", TRIAL],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert "dataset/grid.png" in seen["files"]  # the trial did write its image grid
    assert seen["heavy"] == [], seen


def test_the_grid_puts_each_class_on_its_row(tmp_path):
    """Two classes of 2x3 images, three per row: class 0 has two images (its row is padded
    with a white cell), class 1 three; every pixel lands where the layout says."""
    x = torch.rand(5, 1, 2, 3) * 0.9
    y = torch.tensor([1, 0, 1, 0, 1])
    save_grid(x, y, tmp_path / "g.png", per_class=3)
    img = torch.tensor(list(Image.open(tmp_path / "g.png").getdata()), dtype=torch.float32)
    width, height = PAD + 3 * (3 + PAD), PAD + 2 * (2 + PAD)
    assert Image.open(tmp_path / "g.png").size == (width, height)
    img = img.reshape(height, width) / 255

    def cell(row, col):
        top, left = PAD + row * (2 + PAD), PAD + col * (3 + PAD)
        return img[top : top + 2, left : left + 3]

    expected = {(0, 0): x[1, 0], (0, 1): x[3, 0], (1, 0): x[0, 0], (1, 1): x[2, 0], (1, 2): x[4, 0]}
    for (row, col), pixels in expected.items():
        assert torch.allclose(cell(row, col), pixels, atol=1 / 255), (row, col)
    assert torch.all(cell(0, 2) == 1.0)  # the padding cell of the short row is white
    assert torch.all(img[0] == 1.0) and torch.all(img[:, 0] == 1.0)  # the border


def test_an_rgb_grid_keeps_its_colours(tmp_path):
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = 1.0  # pure red
    save_grid(x, torch.tensor([0]), tmp_path / "rgb.png", per_class=1)
    image = Image.open(tmp_path / "rgb.png").convert("RGB")
    assert image.getpixel((PAD, PAD)) == (255, 0, 0)
    assert image.getpixel((0, 0)) == (255, 255, 255)
