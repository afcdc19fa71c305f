"""`python -m training compare`: the best epoch follows the trainer's rule and the table reads results.csv."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from training.__main__ import main as training_cli
from training.compare import compare, markdown_table
from training.engine import csv_fields

NAMES = ["fall", "sit", "stand"]


def write_run(folder: Path, rows: list[dict]) -> Path:
    """A results.csv exactly as the trainer writes it (same writer, same columns)."""
    folder.mkdir(parents=True)
    with (folder / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=csv_fields(NAMES), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return folder


def row(epoch: int, m50: float | None = None, m5095: float | None = None, quality: bool = True) -> dict:
    r = {"epoch": epoch, "box": 2.0, "cls": 2.0, "dfl": 2.0, "lr": 0.01, "epoch_s": 1800.0, "train_img_s": 6.0}
    if quality:
        r["quality"] = 0.5
    if m50 is not None:
        r.update({"mAP50": m50, "mAP50_95": m5095})
    return r


def test_best_epoch_is_the_highest_map50_95_and_unvalidated_epochs_are_skipped(tmp_path) -> None:
    g = write_run(tmp_path / "G", [row(1, 0.10, 0.03), row(2), row(3, 0.20, 0.08), row(4, 0.25, 0.07)])
    base = write_run(tmp_path / "baseline", [row(1, 0.05, 0.02, quality=False), row(2, 0.06, 0.02, quality=False)])
    png = tmp_path / "cmp.png"
    s_g, s_base = compare([g, base], png)
    assert (s_g.name, s_g.epochs, s_g.best_epoch, s_g.best_map50, s_g.best_map50_95) == ("G", 4, 3, 0.20, 0.08)
    assert (s_g.last_map50, s_g.last_map50_95) == (0.25, 0.07)
    assert s_g.hours == pytest.approx(2.0)
    assert s_base.best_epoch == 1  # a tie keeps the earlier epoch, as best.pt does (strictly greater replaces it)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = markdown_table([s_g, s_base]).splitlines()
    assert table[2] == "| G | 4 | 3 | - | 0.2000 | 0.0800 | 0.2500 | 0.0700 | 2.00 |"


def test_multi_source_runs_pick_the_best_epoch_by_fitness_and_plot_each_source(tmp_path) -> None:
    sources = ["care-home", "ip-cameras"]
    folder = tmp_path / "mnv2"
    folder.mkdir()
    rows = [row(1)]  # not validated: no per-source cells, as with --val-interval 2
    for epoch, (m5095, fit) in enumerate([(0.10, 0.30), (0.20, 0.25), (0.15, 0.35)], 2):
        r = row(epoch, m5095 + 0.2, m5095)
        r["fitness"] = fit
        r.update({f"{s}/{k}": 0.1 * epoch for s in sources for k in ("fall_AP50", "person_AP50", "fall_F1")})
        rows.append(r)
    with (folder / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=csv_fields(NAMES, sources), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    png = tmp_path / "sources.png"
    (summary,) = compare([folder], png)
    assert summary.best_epoch == 4 and summary.best_fitness == 0.35  # not epoch 3, the best mAP50-95
    import matplotlib.image
    height, width = matplotlib.image.imread(png).shape[:2]
    assert height > width * 0.8  # a row of panels per source under the pooled row


def test_runs_with_the_same_folder_name_keep_apart(tmp_path) -> None:
    a = write_run(tmp_path / "a" / "G", [row(1, 0.10, 0.03)])
    b = write_run(tmp_path / "b" / "G", [row(1, 0.20, 0.05)])
    s_a, s_b = compare([a, b])
    assert (s_a.name, s_a.best_map50, s_b.name, s_b.best_map50) == (str(a), 0.10, str(b), 0.20)


def test_cli_refuses_a_folder_without_results_or_validation(tmp_path, capsys) -> None:
    assert training_cli(["compare", str(tmp_path / "missing")]) == 2
    assert "no results.csv" in capsys.readouterr().err
    write_run(tmp_path / "early", [row(1)])
    assert training_cli(["compare", str(tmp_path / "early")]) == 2
    assert "no validated epoch yet" in capsys.readouterr().err


def test_runs_validated_once_still_draw_their_training_loss_per_epoch(tmp_path) -> None:
    """The ablation's short rows are validated after the last epoch only: the loss row gives curves."""
    from training.compare import panel_layout, read_results
    run = write_run(tmp_path / "short", [row(1), row(2), row(3, 0.20, 0.08)])
    panels = panel_layout({"short": read_results(run)})
    loss_panels = [(key, val_only) for r, _, key, _, val_only in panels if r == 0]
    assert loss_panels == [("box", False), ("cls", False), ("dfl", False)]
    assert [(r, key) for r, _, key, _, _ in panels if r == 1] == [(1, "mAP50"), (1, "mAP50_95")]
    png = tmp_path / "short.png"
    compare([run], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
