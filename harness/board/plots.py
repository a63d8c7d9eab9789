"""Leaderboard plots for one (dataset, threat) group, as base64 PNG for the HTML report.

Figures are built with `matplotlib.figure.Figure` (Agg canvas, no pyplot global state) and
saved without a timestamp, so the same records give the same bytes.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

from harness.board.leaderboard import BoardRow

DPI = 110


@dataclass(frozen=True)
class Plot:
    title: str
    png_base64: str


def group_plots(rows: list[BoardRow]) -> list[Plot]:
    """The three plots of one group; the heatmap only when per-architecture scores exist."""
    plots = [
        Plot("Robust vs clean accuracy (Pareto front marked)", to_png(accuracy_figure(rows))),
        Plot(
            "Robust accuracy (95% CI over runs) vs downstream training cost",
            to_png(cost_figure(rows)),
        ),
    ]
    if any(r.per_arch for r in rows):
        plots.append(
            Plot(
                "Transfer across architectures (PGD robust accuracy)", to_png(transfer_figure(rows))
            )
        )
    return plots


def to_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def new_figure(width: float = 6.0, height: float = 4.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def score_label(rows: list[BoardRow]) -> str:
    kinds = {r.score_by for r in rows}
    if kinds == {"autoattack"}:
        return "AutoAttack robust accuracy"
    return "PGD robust accuracy" if kinds == {"pgd"} else "robust accuracy (AutoAttack, else PGD)"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (higher is better),
    sorted by the first coordinate."""

    def dominated(i: int) -> bool:
        x, y = points[i]
        return any(a >= x and b >= y and (a, b) != (x, y) for a, b in points)

    return sorted((i for i in range(len(points)) if not dominated(i)), key=lambda i: points[i])


def label_points(ax, rows: list[BoardRow], xs: list[float]) -> None:
    """One label per distinct point: variants that coincide share it."""
    names: dict[tuple[float, float], list[str]] = {}
    for row, x in zip(rows, xs):
        names.setdefault((x, row.score), []).append(row.variant)
    for point, variants in names.items():
        ax.annotate(
            ", ".join(variants), point, textcoords="offset points", xytext=(4, 4), fontsize=7
        )


def clamp_to_accuracy(limits: tuple[float, float]) -> tuple[float, float]:
    """Axis limits kept within accuracies' [0, 1] (plus a little room for markers)."""
    return max(limits[0], -0.02), min(limits[1], 1.02)


def accuracy_figure(rows: list[BoardRow]):
    fig, ax = new_figure()
    points = [(r.clean_acc, r.score) for r in rows]
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue", zorder=3)
    front = pareto_front(points)
    ax.plot(
        [points[i][0] for i in front],
        [points[i][1] for i in front],
        "--o",
        color="tab:red",
        mfc="none",
        ms=11,
        label="Pareto front",
        zorder=2,
    )
    label_points(ax, rows, [r.clean_acc for r in rows])
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel(score_label(rows))
    ax.legend(loc="best", fontsize=8)
    ax.margins(0.15)  # room for the point labels
    ax.set_xlim(clamp_to_accuracy(ax.get_xlim()))
    ax.set_ylim(clamp_to_accuracy(ax.get_ylim()))
    ax.grid(alpha=0.3)
    return fig


def cost_figure(rows: list[BoardRow]):
    fig, ax = new_figure()
    shown = [r for r in rows if r.train_work_epochs and r.train_work_epochs > 0]
    xs = [r.train_work_epochs for r in shown]
    # 95% t intervals over runs; a row of one run has none (a bare point)
    half = [
        (r.autoattack_acc_ci95 if r.score_by == "autoattack" else r.robust_acc_ci95) or 0.0
        for r in shown
    ]
    ax.errorbar(xs, [r.score for r in shown], yerr=half, fmt="o", capsize=3)
    label_points(ax, shown, xs)
    ax.set_xscale("log")
    ax.margins(0.15)
    ax.set_ylim(clamp_to_accuracy(ax.get_ylim()))
    ax.set_xlabel("downstream training cost per model (work epochs, log scale)")
    ax.set_ylabel(score_label(rows))
    if len(shown) < len(rows):
        ax.set_title(
            f"{len(rows) - len(shown)} row(s) without a positive cost not shown", fontsize=8
        )
    ax.grid(alpha=0.3, which="both")
    return fig


def transfer_figure(rows: list[BoardRow]):
    archs = sorted({a.arch for r in rows for a in r.per_arch})
    grid = [[arch_value(r, a) for a in archs] for r in rows]
    fig, ax = new_figure(max(4.0, 1.2 * len(archs) + 2.5), max(2.5, 0.45 * len(rows) + 1.5))
    image = ax.imshow(
        [[math.nan if v is None else v for v in line] for line in grid],
        vmin=0.0,
        vmax=1.0,
        cmap="viridis",
        aspect="auto",
    )
    ax.set_xticks(range(len(archs)), archs)
    ax.set_yticks(range(len(rows)), [r.variant for r in rows])
    for i, line in enumerate(grid):
        for j, value in enumerate(line):
            text = "n/a" if value is None else f"{value:.2f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value is not None and value < 0.6 else "black",
            )
    fig.colorbar(image, ax=ax, label="PGD robust accuracy")
    ax.set_xlabel("evaluation architecture")
    return fig


def arch_value(row: BoardRow, arch: str) -> float | None:
    return next((a.robust_acc for a in row.per_arch if a.arch == arch), None)
