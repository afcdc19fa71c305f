"""Score the action timeline and fall events of whole videos against published action ranges.

`python -m service.evaluate CLIPS_DIR` reads `CLIPS_DIR/annotations.csv` (the format of
`../shared/data/videos/gmdcsa24-s1/annotations.csv`: one row per clip, `path`, `label` (`Fall` or
`ADL`), and action ranges in seconds in `classes_seconds_as_published`, e.g.
`Falling (BW)[0.4 to 4]; Standing[0 to 0.3]`), gets the NDJSON of `python -m service analyze`
for every clip (run here, or read from `--ndjson-dir`), and prints per clip and overall:

- fall segments: how many smoothed `fall` segments, how many overlap the annotated fall range,
  and false ones (not overlapping it; every one in a daily-activity clip);
- fall tIoU: temporal IoU of the fall segments with the annotated fall range;
- onset error: onset of the first overlapping fall segment minus the annotated start (s);
- alert: whether a `fall_alert` came at or after the annotated start, its delay after that start,
  and false alerts (before the range, or any in a daily-activity clip);
- time down: predicted (onset to end of the fall lifecycle) minus annotated (range length, cut at
  the end of the video, since a published "Falling" range runs to the end of the clip);
- action accuracy: per frame inside annotated ranges, the smoothed action of the main person
  (highest-scored tracked person of that frame) against the annotated classes, and the raw
  per-frame detector class for comparison. Where ranges overlap, either class counts as right.

Classes: Standing, Walking -> stand; Sitting -> sit; Falling, Fall -> fall; others are ignored.
A table on stdout, or JSON with `--json`. `--replay` recomputes tracking, timeline and events
from the frame lines with the given pipeline settings (no model run), to compare settings.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.frames import ACTIONS, Frame, Person
from service.pipeline import PipelineSettings, SourcePipeline

CLASS_MAP = {"standing": "stand", "walking": "stand", "sitting": "sit", "falling": "fall", "fall": "fall"}
_RANGE = re.compile(r"([A-Za-z][A-Za-z ]*?)\s*(?:\([^)]*\))?\s*\[\s*([\d.]+)\s*to\s*([\d.]+)\s*\]")


@dataclass(frozen=True)
class ActionRange:
    action: str  # fall | sit | stand
    start_s: float
    end_s: float


@dataclass(frozen=True)
class ClipAnnotation:
    path: str  # relative to the clips folder
    label: str  # "Fall" or "ADL"
    fps: float | None
    ranges: tuple[ActionRange, ...]

    @property
    def is_fall(self) -> bool:
        return self.label.strip().lower() == "fall"

    @property
    def fall_range(self) -> tuple[float, float] | None:
        falls = [r for r in self.ranges if r.action == "fall"]
        return (min(r.start_s for r in falls), max(r.end_s for r in falls)) if falls else None

    def labels_at(self, t: float) -> set[str]:
        return {r.action for r in self.ranges if r.start_s <= t <= r.end_s}


def parse_ranges(text: str) -> tuple[ActionRange, ...]:
    """`Falling (BW)[0.4 to 4]; Standing[0 to 0.3]` -> mapped ranges; unknown classes dropped."""
    out = []
    for name, start, end in _RANGE.findall(text or ""):
        action = CLASS_MAP.get(name.strip().split()[0].lower()) if name.strip() else None
        if action is not None:
            out.append(ActionRange(action, float(start), float(end)))
    return tuple(out)


def load_annotations(csv_path: Path) -> list[ClipAnnotation]:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"path", "label", "classes_seconds_as_published"}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"{csv_path}: needs columns {sorted(need)}")
    return [ClipAnnotation(path=r["path"], label=r["label"],
                           fps=float(r["fps"]) if r.get("fps") else None,
                           ranges=parse_ranges(r["classes_seconds_as_published"])) for r in rows]


@dataclass
class Analysis:
    """The NDJSON of one analysed video, split by line type."""

    frames: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    summary: dict | None = None
    seconds: float | None = None  # wall time of the analysis run, when run here


def parse_ndjson(lines) -> Analysis:
    out = Analysis()
    for line in lines:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        kind = msg.get("type")
        if kind == "frame":
            out.frames.append(msg)
        elif kind == "summary":
            out.summary = msg
        elif kind in ("fall_alert", "still_down", "fall_cleared"):
            out.events.append(msg)
    return out


def replay(analysis: Analysis, settings: PipelineSettings, source: str = "replay") -> Analysis:
    """Run tracking, timeline and fall rules again on the frame lines' detections."""
    # the tracker's default thresholds follow the detector's, recorded in the summary by `analyze`
    threshold = ((analysis.summary or {}).get("model") or {}).get("score_threshold")
    pipeline = SourcePipeline(source, settings, live=False, detection_threshold=threshold)
    frames, events = [], []
    for fr in analysis.frames:
        persons = [Person(box=tuple(p["box"]), score=float(p["score"]), action=p["action"],
                          class_id=ACTIONS.index(p["action"]) if p["action"] in ACTIONS else len(ACTIONS),
                          class_scores=tuple(p["class_scores"]) if p.get("class_scores") else None,
                          reported=weak is False)
                   for weak in (False, True) for p in fr.get("weak" if weak else "persons", [])]
        frame = Frame(source=source, index=int(fr["frame"]), pts_s=float(fr["pts_s"]),
                      captured_at=float(fr.get("captured_at", 0.0)), image=None)  # type: ignore[arg-type]
        result, evs = pipeline.step(frame, persons, float(fr.get("latency_ms", 0.0)),
                                    int(fr.get("dropped", 0)))
        frames.append(result.to_json())
        events += [e.to_json() for e in evs]
    events += [e.to_json() for e in pipeline.finish()]
    return Analysis(frames=frames, events=events, summary=pipeline.summary(), seconds=analysis.seconds)


def run_analyze(video: Path, model: Path | None, save_to: Path | None = None) -> Analysis:
    """`python -m service analyze VIDEO` in a child process; its NDJSON parsed (and saved)."""
    cmd = [sys.executable, "-m", "service", "analyze", str(video), "--weak"]
    if model is not None:
        cmd += ["--model", str(model)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"analyze {video} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        save_to.write_text(proc.stdout)
    analysis = parse_ndjson(proc.stdout.splitlines())
    analysis.seconds = seconds
    return analysis


def _segments(summary: dict) -> list[tuple[int, dict]]:
    return [(t["track_id"], s) for t in summary.get("tracks", []) for s in t.get("segments", [])]


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, cur0, cur1 = 0.0, None, None
    for a, b in sorted(intervals):
        if cur1 is None or a > cur1:
            if cur1 is not None:
                total += cur1 - cur0
            cur0, cur1 = a, b
        else:
            cur1 = max(cur1, b)
    return total + ((cur1 - cur0) if cur1 is not None else 0.0)


def _frame_step(analysis: Analysis, ann: ClipAnnotation) -> float:
    pts = [f["pts_s"] for f in analysis.frames]
    diffs = [b - a for a, b in zip(pts, pts[1:]) if b > a]
    if diffs:
        return statistics.median(diffs)
    return 1.0 / ann.fps if ann.fps else 1.0 / 30.0


def _main_actions(analysis: Analysis, segments: list[tuple[int, dict]]) -> tuple[list, list]:
    """Per frame: (smoothed action of the main person, raw class of the best detection)."""
    smoothed, raw = [], []
    for fr in analysis.frames:
        persons = sorted(fr.get("persons", []), key=lambda p: -p["score"])
        raw.append(persons[0]["action"] if persons else None)
        covering = [(tid, s) for tid, s in segments if s["start_frame"] <= fr["frame"] <= s["end_frame"]]
        tracked = [p["track_id"] for p in persons if p.get("track_id") is not None]
        pick = next((s for tid in tracked for t, s in covering if t == tid), None)
        if pick is None and covering:
            pick = max(covering, key=lambda ts: ts[1].get("frames_observed", 0))[1]
        smoothed.append(pick["action"] if pick else None)
    return smoothed, raw


def score_clip(ann: ClipAnnotation, analysis: Analysis) -> dict:
    """All per-clip numbers of the module docstring."""
    if analysis.summary is None:
        raise ValueError(f"{ann.path}: no summary line (use --replay to rebuild it)")
    dt = _frame_step(analysis, ann)
    video_end = (analysis.frames[-1]["pts_s"] + dt) if analysis.frames else 0.0
    segments = _segments(analysis.summary)
    # Fall segments as [start, end + one frame) with their track and first frame.
    fall_segs = [(s["start_s"], s["end_s"] + dt, tid, s["start_frame"]) for tid, s in segments
                 if s["action"] == "fall"]
    alerts = sorted(e["pts_s"] for e in analysis.events if e["type"] == "fall_alert")
    rng = ann.fall_range
    out: dict = {"clip": ann.path, "kind": "fall" if ann.is_fall else "adl",
                 "frames": len(analysis.frames), "analyze_s": analysis.seconds,
                 "fall_segments": len(fall_segs), "alerts": len(alerts)}
    if rng is not None:
        a0, a1 = rng[0], min(rng[1], video_end)
        hits = sorted(s for s in fall_segs if _overlap(s[0], s[1], a0, a1) > 0)
        inter = _union_length([(max(s[0], a0), min(s[1], a1)) for s in hits])
        union = _union_length([s[:2] for s in fall_segs] + [(a0, a1)])
        first = hits[0] if hits else None
        fall = next((f for f in analysis.summary.get("falls", []) if first is not None
                     and f["track_id"] == first[2] and f["onset_frame"] == first[3]), None)
        time_down = fall["time_down_s"] if fall is not None else None
        good_alerts = [t for t in alerts if a0 <= t <= a1]
        out.update({
            "annotated_fall_s": [round(a0, 3), round(a1, 3)],
            "overlapping_fall_segments": len(hits),
            "false_fall_segments": len(fall_segs) - len(hits),
            "fall_tiou": round(inter / union, 4) if union > 0 else 0.0,
            "onset_error_s": round(hits[0][0] - a0, 3) if hits else None,
            "alert_raised": bool(good_alerts),
            "alert_delay_s": round(good_alerts[0] - a0, 3) if good_alerts else None,
            "false_alerts": len(alerts) - len(good_alerts),
            "time_down_s": time_down,
            "annotated_time_down_s": round(a1 - a0, 3),
            "time_down_error_s": round(time_down - (a1 - a0), 3) if time_down is not None else None,
        })
    else:
        out.update({"overlapping_fall_segments": 0, "false_fall_segments": len(fall_segs),
                    "alert_raised": bool(alerts), "false_alerts": len(alerts)})
    smoothed, raw = _main_actions(analysis, segments)
    scored = right = right_raw = 0
    for fr, act, act_raw in zip(analysis.frames, smoothed, raw):
        labels = ann.labels_at(fr["pts_s"])
        if not labels:
            continue
        scored += 1
        right += act in labels
        right_raw += act_raw in labels
    out.update({"frames_scored": scored, "correct": right, "correct_raw": right_raw,
                "action_accuracy": round(right / scored, 4) if scored else None,
                "raw_action_accuracy": round(right_raw / scored, 4) if scored else None})
    return out


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 4) if values else None


def overall(clips: list[dict]) -> dict:
    falls = [c for c in clips if c["kind"] == "fall"]
    adls = [c for c in clips if c["kind"] == "adl"]
    scored = sum(c["frames_scored"] for c in clips)
    return {
        "fall_clips": len(falls), "adl_clips": len(adls),
        "fall_clips_alerted": sum(c["alert_raised"] for c in falls),
        "fall_clips_one_overlapping_segment": sum(c["overlapping_fall_segments"] == 1 for c in falls),
        "mean_fall_tiou": _mean([c["fall_tiou"] for c in falls]),
        "mean_abs_onset_error_s": _mean([abs(c["onset_error_s"]) for c in falls
                                         if c["onset_error_s"] is not None]),
        "mean_alert_delay_s": _mean([c["alert_delay_s"] for c in falls]),
        "mean_abs_time_down_error_s": _mean([abs(c["time_down_error_s"]) for c in falls
                                             if c.get("time_down_error_s") is not None]),
        "false_fall_segments_adl": sum(c["false_fall_segments"] for c in adls),
        "false_alerts_adl": sum(c["false_alerts"] for c in adls),
        "adl_clips_alerted": sum(1 for c in adls if c["false_alerts"]),
        "false_fall_segments_all": sum(c["false_fall_segments"] for c in clips),
        "false_alerts_all": sum(c["false_alerts"] for c in clips),
        "frames_scored": scored,
        "action_accuracy": round(sum(c["correct"] for c in clips) / scored, 4) if scored else None,
        "raw_action_accuracy": round(sum(c["correct_raw"] for c in clips) / scored, 4) if scored else None,
    }


def evaluate(clips_dir: Path, annotations: Path | None = None, model: Path | None = None,
             ndjson_dir: Path | None = None, save_dir: Path | None = None, replay_settings:
             PipelineSettings | None = None, log=None) -> dict:
    """Analyse (or read) every annotated clip and score it; returns {"clips", "overall"}."""
    anns = load_annotations(annotations or clips_dir / "annotations.csv")
    clips = []
    for ann in anns:
        if ndjson_dir is not None:
            saved = (ndjson_dir / ann.path).with_suffix(".ndjson")
            with open(saved) as f:
                analysis = parse_ndjson(f)
        else:
            save_to = (save_dir / ann.path).with_suffix(".ndjson") if save_dir else None
            analysis = run_analyze(clips_dir / ann.path, model, save_to)
        if replay_settings is not None or analysis.summary is None:
            analysis = replay(analysis, replay_settings or PipelineSettings(), source=ann.path)
        clips.append(score_clip(ann, analysis))
        if log is not None:
            log(f"{ann.path}: {clips[-1]['frames']} frames"
                + (f" in {analysis.seconds:.1f} s" if analysis.seconds else ""))
    return {"clips": clips, "overall": overall(clips)}


def _fmt(value, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec) if isinstance(value, float) else str(value)


def format_table(report: dict) -> str:
    head = ["clip", "kind", "frames", "fall segs", "overlap", "false", "tIoU", "onset err s",
            "alert", "delay s", "false alerts", "down s", "ann down s", "acc", "acc raw", "run s"]
    rows = [[c["clip"], c["kind"], str(c["frames"]), str(c["fall_segments"]),
             str(c["overlapping_fall_segments"]), str(c["false_fall_segments"]),
             _fmt(c.get("fall_tiou")), _fmt(c.get("onset_error_s")), _fmt(c["alert_raised"]),
             _fmt(c.get("alert_delay_s")), str(c["false_alerts"]), _fmt(c.get("time_down_s")),
             _fmt(c.get("annotated_time_down_s")), _fmt(c["action_accuracy"], ".3f"),
             _fmt(c["raw_action_accuracy"], ".3f"), _fmt(c["analyze_s"], ".1f")] for c in report["clips"]]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    o = report["overall"]
    lines = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows] + [
        "",
        f"fall clips alerted: {o['fall_clips_alerted']}/{o['fall_clips']}   "
        "with exactly one overlapping fall segment: "
        f"{o['fall_clips_one_overlapping_segment']}/{o['fall_clips']}",
        f"mean fall tIoU: {_fmt(o['mean_fall_tiou'], '.3f')}   mean |onset error|: "
        f"{_fmt(o['mean_abs_onset_error_s'])} s   mean alert delay: {_fmt(o['mean_alert_delay_s'])} s   "
        f"mean |time-down error|: {_fmt(o['mean_abs_time_down_error_s'])} s",
        f"daily-activity clips: {o['false_fall_segments_adl']} false fall segments, "
        f"{o['false_alerts_adl']} false alerts in {o['adl_clips_alerted']} of {o['adl_clips']} clips",
        f"frame action accuracy inside annotated ranges: {_fmt(o['action_accuracy'], '.3f')} smoothed, "
        f"{_fmt(o['raw_action_accuracy'], '.3f')} raw ({o['frames_scored']} frames)",
    ]
    return "\n".join(lines)


def _parse_settings(pairs: list[str]) -> PipelineSettings:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        values[key.strip()] = value.strip()
    try:
        return PipelineSettings.model_validate(values)
    except ValueError as exc:
        raise SystemExit(f"bad --set: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m service.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("clips_dir", type=Path, help="folder of clips; paths in the CSV are relative to it")
    ap.add_argument("--annotations", type=Path, help="annotation CSV (default CLIPS_DIR/annotations.csv)")
    ap.add_argument("--model", type=Path, help="ONNX model given to `analyze` (default: its default)")
    ap.add_argument("--ndjson-dir", type=Path, help="read saved NDJSON (CLIP.ndjson) instead of analysing")
    ap.add_argument("--save-ndjson", type=Path, help="keep each analysis as DIR/CLIP.ndjson")
    ap.add_argument("--replay", action="store_true",
                    help="recompute tracking, timeline and events from the frame lines")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="pipeline setting to replay with (implies --replay), e.g. confirm_s=1.5; repeatable")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    settings = _parse_settings(args.set) if (args.replay or args.set) else None
    try:
        report = evaluate(args.clips_dir, args.annotations, args.model, args.ndjson_dir,
                          args.save_ndjson, settings, log=lambda m: print(m, file=sys.stderr))
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
