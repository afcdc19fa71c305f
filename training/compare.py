"""Side-by-side view of training runs (the ablation a reader would rather look at than read).

Reads each run's `results.csv` (written by the trainer every epoch), so it works on finished and
running runs alike and needs no checkpoint.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

CURVE_KEYS = ("mAP50", "mAP50_95")
SOURCE_CURVES = ("fall_AP50", "person_AP50", "fall_F1")  # per val source, for multi-source runs
TRAIN_LOSS_KEYS = ("box", "cls", "dfl")  # every epoch has them (box differs between CIoU and Inner-CIoU rows)


@dataclass(frozen=True)
class RunSummary:
    """The numbers the model card quotes for one run."""

    name: str
    epochs: int
    best_epoch: int  # highest fitness (multi-source) or val mAP50-95, earliest on a tie: the trainer's rule
    best_map50: float
    best_map50_95: float
    last_map50: float  # of the last validated epoch
    last_map50_95: float
    hours: float  # sum of epoch wall times
    best_fitness: float | None = None  # multi-source runs: source_metrics.fitness of the best epoch


def read_results(run: str | Path) -> list[dict[str, float]]:
    """Rows of a run's results.csv as floats; empty cells (a term a preset lacks) are left out."""
    path = Path(run) / "results.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a training run folder (no results.csv)")
    with path.open(newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{path}: no finished epoch yet")
    return rows


def validated(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """Epochs that were validated (with `val_interval` > 1 the others have no mAP)."""
    return [r for r in rows if "mAP50_95" in r]


def summarize(name: str, rows: list[dict[str, float]]) -> RunSummary:
    checked = validated(rows)
    if not checked:
        raise ValueError(f"{name}: no validated epoch yet")
    key = "fitness" if all("fitness" in r for r in checked) else "mAP50_95"
    best = max(checked, key=lambda r: (r[key], -r["epoch"]))
    last = checked[-1]
    return RunSummary(name=name, epochs=int(rows[-1]["epoch"]), best_epoch=int(best["epoch"]),
                      best_map50=best["mAP50"], best_map50_95=best["mAP50_95"],
                      last_map50=last["mAP50"], last_map50_95=last["mAP50_95"],
                      hours=sum(r.get("epoch_s", 0.0) for r in rows) / 3600,
                      best_fitness=best.get("fitness"))


def sources_of(rows: list[dict[str, float]]) -> list[str]:
    """Val sources with per-source columns (`SOURCE/fall_AP50` ...), in column order."""
    seen: list[str] = []
    for row in rows:  # every row: epochs that were not validated have no such columns
        for k in row:
            if "/" in k and k.split("/", 1)[0] not in seen:
                seen.append(k.split("/", 1)[0])
    return seen


def markdown_table(summaries: list[RunSummary]) -> str:
    lines = ["| run | epochs | best epoch | fitness | mAP50 | mAP50-95 | last mAP50 | last mAP50-95 | epoch hours |",
             "|---|---|---|---|---|---|---|---|---|"]
    fit = lambda s: "-" if s.best_fitness is None else f"{s.best_fitness:.4f}"  # noqa: E731
    lines += [f"| {s.name} | {s.epochs} | {s.best_epoch} | {fit(s)} | {s.best_map50:.4f} | {s.best_map50_95:.4f} | "
              f"{s.last_map50:.4f} | {s.last_map50_95:.4f} | {s.hours:.2f} |" for s in summaries]
    return "\n".join(lines)


def panel_layout(runs: dict[str, list[dict[str, float]]]) -> list[tuple[int, int, str, str, bool]]:
    """(row, column, results.csv key, title, validated epochs only) of every panel of the plot."""
    sources = list(dict.fromkeys(s for rows in runs.values() for s in sources_of(rows)))
    losses = [k for k in TRAIN_LOSS_KEYS if any(k in r for rows in runs.values() for r in rows)]
    top = 1 if losses else 0
    panels = [(0, j, key, f"train {key} loss", False) for j, key in enumerate(losses)]
    panels += [(top, j, key, f"val {key.replace('_', '-')}", True) for j, key in enumerate(CURVE_KEYS)]
    panels += [(top + 1 + i, j, f"{src}/{key}", f"{src}: {key.replace('_', ' ')}", True)
               for i, src in enumerate(sources) for j, key in enumerate(SOURCE_CURVES)]
    return panels


def plot_runs(runs: dict[str, list[dict[str, float]]], path: str | Path) -> None:
    """Training loss per epoch in the first row (every epoch has it, so short runs validated once
    still draw curves), pooled val metrics in the next, one line per run; multi-source runs add a row
    per val source (fall AP50, person AP50, fall F1 at the operating point)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = panel_layout(runs)
    nrows = 1 + max(p[0] for p in panels)
    ncols = 1 + max(p[1] for p in panels)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for row, col, key, title, val_only in panels:
        ax = axes[row][col]
        for name, rows in runs.items():
            pts = [(r["epoch"], r[key]) for r in (validated(rows) if val_only else rows) if key in r]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    used = {(r, c) for r, c, *_ in panels}
    for r in range(nrows):
        for c in range(ncols):
            if (r, c) not in used:
                axes[r][c].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(run_dirs: list[str | Path], out_png: str | Path | None = None) -> list[RunSummary]:
    names = [Path(r).name for r in run_dirs]
    if len(set(names)) < len(names):  # same folder name under different parents: tell them apart
        names = [str(r) for r in run_dirs]
    runs = {name: read_results(r) for name, r in zip(names, run_dirs)}
    summaries = [summarize(name, rows) for name, rows in runs.items()]
    if out_png is not None:
        plot_runs(runs, out_png)
    return summaries
