"""Rendering of leaderboard records: `render(records, fmt)` is a pure function to text.

md and html show one table per (dataset, threat) group, since accuracies under different
threats are not comparable; csv and json hold every record in one flat list.
"""

from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import asdict, dataclass
from typing import Callable

from harness.errors import HarnessInputError
from harness.leaderboard import Record, groups

FORMATS = ("md", "csv", "json", "html")
NESTED = ("run_ids", "config", "per_arch")
ARCH_FIELDS = ("n", "clean_acc", "robust_acc", "robust_acc_std", "autoattack_acc")
RANKING_NOTE = ("Each row is a variant's best configuration by validation robust accuracy, "
                "averaged over its repeat seeds (mean ± std over runs). Ranked by AutoAttack "
                "robust accuracy, PGD where AutoAttack was off. Costs: wall seconds / work "
                "epochs (passes over the full training set); score/ep is the ranking accuracy "
                "per work epoch of training one downstream model.")


def render(records: list[Record], fmt: str, title: str = "Leaderboard") -> str:
    renderers: dict[str, Callable[[list[Record], str], str]] = {
        "md": render_md, "csv": render_csv, "json": render_json, "html": render_html,
    }
    if fmt not in renderers:
        raise HarnessInputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}.",
                                field="--format")
    return renderers[fmt](records, title)


# ------------------------------------------------------------------------ table columns


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    numeric: bool
    text: Callable[[Record], str]
    sort: Callable[[Record], object]


def num(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def acc(mean: float | None, std: float | None) -> str:
    return "off" if mean is None else f"{mean:.3f} ± {std or 0.0:.3f}"


def cost(seconds: float | None, epochs: float | None) -> str:
    return f"{num(seconds)} s / {num(epochs)} ep"


def tuned(record: Record) -> str:
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
    Column("clean_acc", "clean", True, lambda r: acc(r.clean_acc, r.clean_acc_std),
           lambda r: r.clean_acc),
    Column("robust_acc", "PGD", True, lambda r: acc(r.robust_acc, r.robust_acc_std),
           lambda r: r.robust_acc),
    Column("autoattack_acc", "AutoAttack", True,
           lambda r: acc(r.autoattack_acc, r.autoattack_acc_std), lambda r: r.autoattack_acc),
    Column("n", "n", True, lambda r: str(r.n), lambda r: r.n),
    Column("failed", "failed", True, lambda r: str(r.failed), lambda r: r.failed),
    Column("learn", "learning (once)", True, lambda r: cost(r.learn_seconds, r.learn_work_epochs),
           lambda r: r.learn_work_epochs),
    Column("train", "per model", True, lambda r: cost(r.train_seconds, r.train_work_epochs),
           lambda r: r.train_work_epochs),
    Column("score_per_train_epoch", "score/ep", True, lambda r: num(r.score_per_train_epoch),
           lambda r: r.score_per_train_epoch),
    Column("val_robust_acc", "val robust", True, lambda r: f"{r.val_robust_acc:.3f}",
           lambda r: r.val_robust_acc),
    Column("config", "tuned", False, tuned, tuned),
)


def threat_text(norm: str, eps: float | None) -> str:
    name = {"linf": "Linf", "l2": "L2"}.get(norm, norm)
    if eps is None:
        return f"{name} eps ?"
    # A short decimal (0.2, 0.5) reads best as itself; k/255 only where the decimal would be
    # a long fraction (8/255 = 0.0314): that is how such radii were written in the spec.
    in_255 = eps * 255
    short = abs(eps - round(eps, 3)) < 1e-9
    if not short and eps < 1 and abs(in_255 - round(in_255)) < 1e-6 and round(in_255) >= 1:
        return f"{name} eps {round(in_255)}/255"
    return f"{name} eps {eps:.4g}"


def group_title(key: tuple) -> str:
    dataset, norm, eps = key
    return f"{dataset} · {threat_text(norm, eps)}"


# ----------------------------------------------------------------------------- md, csv, json


def render_md(records: list[Record], title: str) -> str:
    lines = [f"# {title}", "", RANKING_NOTE, ""]
    for key, rows in groups(records).items():
        lines += [f"## {group_title(key)}", "", md_row([c.header for c in COLUMNS]),
                  md_row(["---:" if c.numeric else "---" for c in COLUMNS])]
        lines += [md_row([c.text(r) for c in COLUMNS]) for r in rows]
        lines.append("")
    return "\n".join(lines)


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def flat_row(record: Record, archs: list[str]) -> dict[str, object]:
    row = {k: v for k, v in asdict(record).items() if k not in NESTED}
    row["run_ids"] = ";".join(record.run_ids)
    row["config"] = json.dumps(record.config, sort_keys=True)
    scores = {a.arch: a for a in record.per_arch}
    for arch in archs:
        for name in ARCH_FIELDS:
            row[f"arch.{arch}.{name}"] = getattr(scores[arch], name) if arch in scores else None
    return row


def render_csv(records: list[Record], title: str) -> str:
    archs = sorted({a.arch for r in records for a in r.per_arch})
    rows = [flat_row(r, archs) for r in records]
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buf.getvalue()


def render_json(records: list[Record], title: str) -> str:
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


def html_table(rows: list[Record]) -> str:
    def cls(c: Column) -> str:
        return "num" if c.numeric else "text"

    head = "".join(f'<th class="{cls(c)}" data-key="{c.key}" data-type="{cls(c)}">'
                   f"{html.escape(c.header)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f'<td class="{cls(c)}" data-sort="{html.escape(sort_attr(c.sort(r)))}">'
                         f"{html.escape(c.text(r))}</td>" for c in COLUMNS) + "</tr>\n"
        for r in rows)
    return (f'<table class="sortable"><thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}</tbody></table>")


def html_section(key: tuple, rows: list[Record]) -> str:
    from harness.plots import group_plots

    figures = "".join(
        f'<figure><img alt="{html.escape(p.title)}" src="data:image/png;base64,{p.png_base64}">'
        f"<figcaption>{html.escape(p.title)}</figcaption></figure>" for p in group_plots(rows))
    return (f"<section>\n<h2>{html.escape(group_title(key))}</h2>\n{html_table(rows)}\n"
            f"<div>{figures}</div>\n</section>\n")


def render_html(records: list[Record], title: str) -> str:
    sections = "".join(html_section(key, rows) for key, rows in groups(records).items())
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(RANKING_NOTE)}</p>\n{sections}"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
