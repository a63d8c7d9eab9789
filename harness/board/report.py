"""Rendering of leaderboard records: `render(records, fmt)` is a pure function to text.

md and html show one table per (dataset, threat, AutoAttack version) group, since accuracies
under different threats or attacks are not comparable; under each table, a note says how many
models each number pools, and footnotes explain the row markers († no fresh-seed repeats,
⚠k a gradient-masking flag). csv and json hold every record in one flat list.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from harness.board.leaderboard import BoardRow, groups
from harness.errors import HarnessInputError
from harness.spec.schema import format_eps

FORMATS = ("md", "csv", "json", "html")
NESTED = ("run_ids", "config", "per_arch", "flags")
ARCH_FIELDS = ("n", "clean_acc", "robust_acc", "robust_acc_std", "autoattack_acc")
RANKING_NOTE = (
    "Each row is a variant's configuration picked by its sweep's validation objective "
    "among its search runs. Its test accuracies are means over that "
    "configuration's repeat runs (fresh seeds), without the search run that picked "
    "it; that run's own test score is the 'search run' column. Cells show the mean, "
    "± the half-width of a 95% Student t interval over runs when n ≥ 2, and n "
    "(runs). Each group is ranked by the metric its title names. Costs: wall "
    "seconds / work epochs (passes over the full training set); score/ep is the "
    "ranking accuracy per work epoch of training one downstream model."
)
SEARCH_ONLY_NOTE = (
    "score of the selected search run; no fresh-seed repeats, so it is biased "
    "upwards (the same run won the search)."
)
# Gradient-masking checks (codes of the `masking_flags` run tag), in the order footnoted.
FLAG_TEXT = {
    "noise_beats_pgd": "the model does better under PGD than under uniform random noise of "
    "the same radius, so the attack is weaker than noise.",
    "fgsm_beats_pgd": "a single FGSM step lowers accuracy more than the full PGD attack does.",
    "aa_far_below_pgd": "AutoAttack accuracy is far below PGD accuracy, so PGD overstates "
    "robustness.",
    "zero_input_grad": "the loss gradient with respect to the input vanishes on many "
    "examples, a sign of masked or obfuscated gradients.",
    "no_zero_at_large_eps": "accuracy stays clearly above zero at a very large radius, "
    "where any working attack should reach it.",
    "randomized_output": "two forward passes on the same inputs give different outputs (a "
    "randomized model), so the deterministic attacks' accuracies are not "
    "reliable; it needs an attack for randomized defences.",
}


def render(records: list[BoardRow], fmt: str, title: str = "Leaderboard") -> str:
    renderers: dict[str, Callable[[list[BoardRow], str], str]] = {
        "md": render_md,
        "csv": render_csv,
        "json": render_json,
        "html": render_html,
    }
    if fmt not in renderers:
        raise HarnessInputError(
            f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}.", field="--format"
        )
    return renderers[fmt](records, title)


# ------------------------------------------------------------------------ table columns


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    numeric: bool
    text: Callable[[BoardRow], str]
    sort: Callable[[BoardRow], object]


def num3(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def num(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def acc(mean: float | None, ci95: float | None, n: int) -> str:
    """ "0.512 ± 0.034 (n=3)" with the 95% half-width; no interval at all for one run."""
    if mean is None:
        return "off"
    if ci95 is None:
        return f"{mean:.3f} (n={n})"
    return f"{mean:.3f} ± {ci95:.3f} (n={n})"


def search_score(record: BoardRow) -> float | None:
    """The selected search run's test score on the row's ranking metric."""
    if record.score_by == "autoattack":
        return record.search_autoattack_acc
    return record.search_robust_acc


def cost(seconds: float | None, epochs: float | None) -> str:
    return f"{num(seconds)} s / {num(epochs)} ep"


def tuned(record: BoardRow) -> str:
    return ", ".join(f"{k}={short(v)}" for k, v in record.config.items())


def short(value: str) -> str:
    """Optuna's floats (0.05176340429875833) shown to 4 significant digits; the rest as is."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if any(c in value for c in ".eE") else value


COLUMNS = (
    Column("rank", "#", True, lambda r: str(r.rank), lambda r: r.rank),
    Column("variant", "method", False, lambda r: r.variant, lambda r: r.variant),
    Column("size", "size", True, lambda r: r.size, lambda r: r.dataset_size),
    Column(
        "clean_acc",
        "clean",
        True,
        lambda r: acc(r.clean_acc, r.clean_acc_ci95, r.n),
        lambda r: r.clean_acc,
    ),
    Column(
        "robust_acc",
        "PGD",
        True,
        lambda r: acc(r.robust_acc, r.robust_acc_ci95, r.n),
        lambda r: r.robust_acc,
    ),
    Column(
        "autoattack_acc",
        "AutoAttack",
        True,
        lambda r: acc(r.autoattack_acc, r.autoattack_acc_ci95, r.autoattack_n),
        lambda r: r.autoattack_acc,
    ),
    Column("n", "n", True, lambda r: str(r.n), lambda r: r.n),
    Column("search_score", "search run", True, lambda r: num3(search_score(r)), search_score),
    Column("failed", "failed", True, lambda r: str(r.failed), lambda r: r.failed),
    Column(
        "learn",
        "learning (once)",
        True,
        lambda r: cost(r.learn_seconds, r.learn_work_epochs),
        lambda r: r.learn_work_epochs,
    ),
    Column(
        "train",
        "per model",
        True,
        lambda r: cost(r.train_seconds, r.train_work_epochs),
        lambda r: r.train_work_epochs,
    ),
    Column(
        "score_per_train_epoch",
        "score/ep",
        True,
        lambda r: num(r.score_per_train_epoch),
        lambda r: r.score_per_train_epoch,
    ),
    Column(
        "val_robust_acc",
        "val robust",
        True,
        lambda r: f"{r.val_robust_acc:.3f}",
        lambda r: r.val_robust_acc,
    ),
    Column("config", "tuned", False, tuned, tuned),
)


def threat_text(norm: str, eps: float | None) -> str:
    name = {"linf": "Linf", "l2": "L2"}.get(norm, norm)
    return f"{name} eps {'?' if eps is None else format_eps(eps)}"


def group_title(key: tuple) -> str:
    dataset, norm, eps, aa_version = key
    return f"{dataset} · {threat_text(norm, eps)} — {ranked_by(aa_version)}"


def ranked_by(aa_version: str) -> str:
    if aa_version == "off":
        return "ranked by PGD (AutoAttack off)"
    if aa_version == "unknown":
        return "ranked by AutoAttack (version not logged)"
    return f"ranked by AutoAttack ({aa_version})"


# ------------------------------------------------------------------ row markers, footnotes

SMOKE_NOTE = (
    "smoke run (--smoke): budgets shrunk to seconds to check the pipeline; "
    "its scores are not results."
)


def flag_numbers(rows: list[BoardRow]) -> dict[str, int]:
    """Footnote number of each flag code in a group: known codes first, in FLAG_TEXT order."""
    known = list(FLAG_TEXT)
    codes = sorted(
        {c for r in rows for c in r.flags},
        key=lambda c: (known.index(c) if c in known else len(known), c),
    )
    return {code: i for i, code in enumerate(codes, 1)}


def markers(record: BoardRow, numbers: dict[str, int]) -> str:
    marks = ["†"] if record.scores_from == "search" else []
    marks += ["§"] if record.smoke else []
    return " ".join(marks + [f"⚠{i}" for i in sorted(numbers[c] for c in record.flags)])


def cells(record: BoardRow, numbers: dict[str, int]) -> list[str]:
    """A row's cell texts; the method cell carries the row's footnote markers."""
    texts = [c.text(record) for c in COLUMNS]
    mark = markers(record, numbers)
    if mark:
        i = next(i for i, c in enumerate(COLUMNS) if c.key == "variant")
        texts[i] = f"{texts[i]} {mark}"
    return texts


def pooling_note(rows: list[BoardRow]) -> str:
    return (
        "Models pooled per accuracy (runs × models per run): "
        + "; ".join(f"{r.variant} {pooled_models(r)}" for r in rows)
        + "."
    )


def pooled_models(r: BoardRow) -> str:
    if r.models_per_run is not None:
        return f"{r.n} × {r.models_per_run} = {r.models}"
    if r.models is not None:
        return f"{r.models} over {r.n} runs"
    return f"{r.n} run(s), models per run not logged"


def break_even_note(rows: list[BoardRow]) -> str:
    """When learning a set once pays: against the best-ranked method that learns nothing (an
    adversarial training, as a rule), the number of downstream models after which learning
    the set once plus training each model on it costs fewer work epochs than training each
    model that method's way. Cost only: the scores are in the table. Empty when the group has
    no such pair."""
    ref = next((r for r in rows if not r.learn_work_epochs and r.train_work_epochs), None)
    if ref is None:
        return ""
    parts = []
    for r in rows:
        if not r.learn_work_epochs or r.train_work_epochs is None:
            continue
        saved = ref.train_work_epochs - r.train_work_epochs  # per model
        parts.append(
            f"{r.variant} after {math.ceil(r.learn_work_epochs / saved)} models"
            if saved > 0
            else f"{r.variant} never (no cheaper per model)"
        )
    if not parts:
        return ""
    return (
        f"Learning once pays against {ref.variant} ({num(ref.train_work_epochs)} work "
        f"epochs per model; cost only, compare the scores): " + "; ".join(parts) + "."
    )


def footnotes(rows: list[BoardRow], numbers: dict[str, int]) -> list[str]:
    notes = ["† " + SEARCH_ONLY_NOTE] if any(r.scores_from == "search" for r in rows) else []
    if any(r.smoke for r in rows):
        notes.append("§ " + SMOKE_NOTE)
    for code, i in numbers.items():
        text = FLAG_TEXT.get(code)
        notes.append(f"⚠{i} {code}" + (f": {text}" if text else ""))
    return notes


# ----------------------------------------------------------------------------- md, csv, json


def render_md(records: list[BoardRow], title: str) -> str:
    lines = [f"# {title}", "", RANKING_NOTE, ""]
    for key, rows in groups(records).items():
        lines += [
            f"## {group_title(key)}",
            "",
            md_row([c.header for c in COLUMNS]),
            md_row(["---:" if c.numeric else "---" for c in COLUMNS]),
        ]
        numbers = flag_numbers(rows)
        lines += [md_row(cells(r, numbers)) for r in rows]
        lines += ["", pooling_note(rows), ""]
        even = break_even_note(rows)
        lines += [even, ""] if even else []
        notes = footnotes(rows, numbers)
        lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    return "\n".join(lines)


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def flat_row(record: BoardRow, archs: list[str]) -> dict[str, object]:
    row = {k: v for k, v in asdict(record).items() if k not in NESTED}
    row["run_ids"] = ";".join(record.run_ids)
    row["config"] = json.dumps(record.config, sort_keys=True)
    row["flags"] = ";".join(record.flags)
    scores = {a.arch: a for a in record.per_arch}
    for arch in archs:
        for name in ARCH_FIELDS:
            row[f"arch.{arch}.{name}"] = getattr(scores[arch], name) if arch in scores else None
    return row


def render_csv(records: list[BoardRow], title: str) -> str:
    archs = sorted({a.arch for r in records for a in r.per_arch})
    rows = [flat_row(r, archs) for r in records]
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buf.getvalue()


def render_json(records: list[BoardRow], title: str) -> str:
    return json.dumps({"records": [asdict(r) for r in records]}, indent=2, allow_nan=False) + "\n"


# ----------------------------------------------------------------------------------- html


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th.text, td.text { text-align: left; }
th { cursor: pointer; user-select: none; background: #f4f4f4; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
figure { display: inline-block; margin: 0.5em; }
figcaption { font-size: 12px; color: #555; }
p.note, ul.footnotes { font-size: 12px; color: #444; }
"""

# Click a header to sort (numbers first descending, text ascending; again to reverse);
# missing values stay last. `#sort=KEY` or `#sort=KEY-asc` in the URL sorts on load.
SCRIPT = """
(function () {
  "use strict";
  function sortTable(table, index, descending) {
    var head = table.tHead.rows[0].cells;
    var numeric = head[index].getAttribute("data-type") === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[index].getAttribute("data-sort");
      var y = b.cells[index].getAttribute("data-sort");
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return descending ? -c : c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(head, function (th) { th.removeAttribute("aria-sort"); });
    head[index].setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  function onClick(table, index) {
    return function () {
      var th = table.tHead.rows[0].cells[index];
      var state = th.getAttribute("aria-sort");
      var descending = state ? state === "ascending" : th.getAttribute("data-type") === "num";
      sortTable(table, index, descending);
    };
  }
  var match = /^#sort=([a-z_]+?)(-asc|-desc)?$/.exec(window.location.hash);
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.addEventListener("click", onClick(table, index));
      if (match && th.getAttribute("data-key") === match[1]) {
        var numeric = th.getAttribute("data-type") === "num";
        sortTable(table, index, match[2] ? match[2] === "-desc" : numeric);
      }
    });
  });
  document.documentElement.setAttribute("data-sortable", "ready");
})();
"""


def sort_attr(value: object) -> str:
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, (int, float)) else str(value)


def html_table(rows: list[BoardRow], numbers: dict[str, int]) -> str:
    def cls(c: Column) -> str:
        return "num" if c.numeric else "text"

    def row(r: BoardRow) -> str:
        return (
            "<tr>"
            + "".join(
                f'<td class="{cls(c)}" data-sort="{html.escape(sort_attr(c.sort(r)))}">'
                f"{html.escape(text)}</td>"
                for c, text in zip(COLUMNS, cells(r, numbers))
            )
            + "</tr>\n"
        )

    head = "".join(
        f'<th class="{cls(c)}" data-key="{c.key}" data-type="{cls(c)}">{html.escape(c.header)}</th>'
        for c in COLUMNS
    )
    body = "".join(row(r) for r in rows)
    return (
        f'<table class="sortable"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>'
    )


def html_section(key: tuple, rows: list[BoardRow]) -> str:
    from harness.board.plots import group_plots

    figures = "".join(
        f'<figure><img alt="{html.escape(p.title)}" src="data:image/png;base64,{p.png_base64}">'
        f"<figcaption>{html.escape(p.title)}</figcaption></figure>"
        for p in group_plots(rows)
    )
    numbers = flag_numbers(rows)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in footnotes(rows, numbers))
    even = break_even_note(rows)
    return (
        f"<section>\n<h2>{html.escape(group_title(key))}</h2>\n{html_table(rows, numbers)}\n"
        f'<p class="note">{html.escape(pooling_note(rows))}</p>\n'
        + (f'<p class="note">{html.escape(even)}</p>\n' if even else "")
        + (f'<ul class="footnotes">{notes}</ul>\n' if notes else "")
        + f"<div>{figures}</div>\n</section>\n"
    )


def render_html(records: list[BoardRow], title: str) -> str:
    sections = "".join(html_section(key, rows) for key, rows in groups(records).items())
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(RANKING_NOTE)}</p>\n{sections}"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
