#!/usr/bin/env python3
"""Replay saved analyses of every clip folder under a grid of fall-rule settings, one table.

The fall rules are chosen from all clip folders at once, never from one clip: this prints, per
setting, the fall clips alerted after their annotated start, the daily-activity clips with an alert
(and their false alerts), and frame accuracy, per folder and summed. The analyses must have been
saved with weak boxes (`python -m service.evaluate FOLDER --save-ndjson DIR`, which runs
`analyze --weak`), so the replay sees what the tracker saw.

usage: python scripts/fall_rule_grid.py SAVED_ROOT --set descent_s=1.5,2,3 --set fall_margin=1,1.2
       (tuple settings: --set upright_actions=stand,stand+sit; `none` for an empty setting;
       SAVED_ROOT/<folder>/ holds each folder's NDJSON; folders are found under $FALLDET_DATA/videos)
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service.evaluate import evaluate  # noqa: E402
from service.pipeline import PipelineSettings  # noqa: E402


def _value(key: str, text: str):
    """`none` -> None; for tuple settings (upright_actions) `stand+sit` -> ("stand", "sit")."""
    if text.lower() in ("none", "null"):
        return None
    field = PipelineSettings.model_fields.get(key)
    if field is not None and "tuple" in str(field.annotation):
        return tuple(text.split("+"))
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("saved", type=Path, help="folder with one sub-folder of saved NDJSON per clip folder")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                    help="a pipeline setting and the values to try (repeatable; the grid is their product)")
    ap.add_argument("--videos", type=Path, default=Path(os.environ.get("FALLDET_DATA", REPO_ROOT.parent / "shared" / "data")) / "videos")
    args = ap.parse_args(argv)
    axes = []
    for item in args.set:
        key, _, values = item.partition("=")
        axes.append([(key.strip(), _value(key.strip(), v.strip())) for v in values.split(",")])
    folders = sorted(p.name for p in args.videos.iterdir() if (p / "annotations.csv").is_file()
                     and (args.saved / p.name).is_dir())
    if not folders:
        print(f"no saved analyses under {args.saved} for the folders of {args.videos}", file=sys.stderr)
        return 2
    print("setting".ljust(44), *(f"{f[:18]:>24}" for f in folders), f"{'all':>24}")
    print(" " * 44, *(f"{'falls  adl-alerted  acc':>24}" for _ in folders + ["all"]))
    for combo in itertools.product(*axes) if axes else [()]:
        settings = PipelineSettings.model_validate(dict(combo))
        cells, tot = [], [0, 0, 0, 0, 0, 0]
        for folder in folders:
            o = evaluate(args.videos / folder, ndjson_dir=args.saved / folder, replay_settings=settings)["overall"]
            cells.append(o)
        row = []
        for folder, o in zip(folders, cells):
            row.append(f"{o['fall_clips_alerted']}/{o['fall_clips']}  {o['adl_clips_alerted']}/{o['adl_clips']} "
                       f"({o['false_alerts_adl']})  {o['action_accuracy'] or 0:.3f}")
            tot = [tot[0] + o["fall_clips_alerted"], tot[1] + o["fall_clips"], tot[2] + o["adl_clips_alerted"],
                   tot[3] + o["adl_clips"], tot[4] + (o["action_accuracy"] or 0) * o["frames_scored"],
                   tot[5] + o["frames_scored"]]
        row.append(f"{tot[0]}/{tot[1]}  {tot[2]}/{tot[3]}  {tot[4] / max(tot[5], 1):.3f}")
        name = " ".join(f"{k}={v}" for k, v in combo) or "defaults"
        print(name.ljust(44), *(f"{c:>24}" for c in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
