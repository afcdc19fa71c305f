"""Side-by-side view of training runs (the ablation a reader would rather look at than read).

Reads each run's `results.csv` (written by the trainer every epoch), so it works on finished and
running runs alike and needs no checkpoint.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

CURVE_KEYS = ("mAP50", "mAP50_95")


@dataclass(frozen=True)
class RunSummary:
    """The numbers the model card quotes for one run."""

    name: str
    epochs: int
    best_epoch: int  # highest val mAP50-95 (earliest on a tie), the trainer's rule for best.pt
    best_map50: float
    best_map50_95: float
    last_map50: float  # of the last validated epoch
    last_map50_95: float
    hours: float  # sum of epoch wall times


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
    best = max(checked, key=lambda r: (r["mAP50_95"], -r["epoch"]))
    last = checked[-1]
    return RunSummary(name=name, epochs=int(rows[-1]["epoch"]), best_epoch=int(best["epoch"]),
                      best_map50=best["mAP50"], best_map50_95=best["mAP50_95"],
                      last_map50=last["mAP50"], last_map50_95=last["mAP50_95"],
                      hours=sum(r.get("epoch_s", 0.0) for r in rows) / 3600)


def markdown_table(summaries: list[RunSummary]) -> str:
    lines = ["| run | epochs | best epoch | mAP50 | mAP50-95 | last mAP50 | last mAP50-95 | epoch hours |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {s.name} | {s.epochs} | {s.best_epoch} | {s.best_map50:.4f} | {s.best_map50_95:.4f} | "
              f"{s.last_map50:.4f} | {s.last_map50_95:.4f} | {s.hours:.2f} |" for s in summaries]
    return "\n".join(lines)


def plot_runs(runs: dict[str, list[dict[str, float]]], path: str | Path) -> None:
    """One panel per val metric, one line per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(CURVE_KEYS), figsize=(10, 3.8))
    for ax, key in zip(axes, CURVE_KEYS):
        for name, rows in runs.items():
            checked = validated(rows)
            ax.plot([r["epoch"] for r in checked], [r[key] for r in checked], marker="o", markersize=3, label=name)
        ax.set_title(f"val {key.replace('_', '-')}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
