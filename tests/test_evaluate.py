"""The clip evaluation: annotation parsing, scoring of hand-made analyses, the CLI, and (slow) the
shipped model with the event logic on the five shared clips."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.evaluate import (ActionRange, Analysis, ClipAnnotation, evaluate, format_table,
                              load_annotations, main, parse_ranges, replay, score_clip)
from service.pipeline import PipelineSettings

FPS = 30.0
STAND = [100.0, 20.0, 160.0, 200.0]
DOWN = [60.0, 150.0, 220.0, 210.0]


def frame_lines(pattern: str, fps: float = FPS) -> list[dict]:
    """Analyze-style frame lines of one person, per frame 'T' stand, 'S' sit, 'F' fall, '.' none."""
    names = {"T": "stand", "S": "sit", "F": "fall"}
    out = []
    for i, ch in enumerate(pattern):
        persons = [] if ch == "." else [{"box": DOWN if ch == "F" else STAND, "score": 0.8,
                                          "action": names[ch], "fall": ch == "F", "track_id": None}]
        out.append({"type": "frame", "source": "x", "frame": i, "pts_s": i / fps, "captured_at": 0.0,
                    "latency_ms": 1.0, "dropped": 0, "persons": persons})
    return out


def analysed(pattern: str) -> Analysis:
    return replay(Analysis(frames=frame_lines(pattern)), PipelineSettings(confirm_s=1.0))


FALL_CLIP = ClipAnnotation("fall/1.mp4", "Fall", FPS,
                           (ActionRange("stand", 0.0, 1.0), ActionRange("fall", 1.0, 9.0)))
ADL_CLIP = ClipAnnotation("adl/2.mp4", "ADL", FPS,
                          (ActionRange("sit", 0.0, 2.0), ActionRange("stand", 1.5, 3.0)))


def test_published_ranges_are_mapped_and_others_ignored():
    assert parse_ranges("Falling (BW)[0.4 to 4]; Standing[0 to 0.3]") == (
        ActionRange("fall", 0.4, 4.0), ActionRange("stand", 0.0, 0.3))
    assert parse_ranges("Falling (SW) [1.8 to 6] ; Sitting [0 to 2]") == (
        ActionRange("fall", 1.8, 6.0), ActionRange("sit", 0.0, 2.0))
    assert parse_ranges("Reading[0 to 2.5]; Walking[0 to 3]") == (ActionRange("stand", 0.0, 3.0),)
    assert parse_ranges("Fall[1 to 2]; Lying[2 to 5]") == (ActionRange("fall", 1.0, 2.0),)
    assert parse_ranges("") == ()


def test_shared_annotation_file_loads(data_dir: Path):
    csv_path = data_dir / "videos" / "gmdcsa24-s1" / "annotations.csv"
    if not csv_path.is_file():
        pytest.skip(f"{csv_path} is missing (set FALLDET_DATA)")
    clips = {c.path: c for c in load_annotations(csv_path)}
    assert sorted(clips) == ["adl/10.mp4", "adl/16.mp4", "fall/13.mp4", "fall/14.mp4", "fall/15.mp4"]
    assert clips["fall/15.mp4"].fall_range == (1.8, 6.0) and clips["fall/15.mp4"].is_fall
    assert clips["fall/15.mp4"].labels_at(1.9) == {"fall", "sit"}  # overlapping ranges: either counts
    assert clips["adl/10.mp4"].fall_range is None and not clips["adl/10.mp4"].is_fall


def test_fall_clip_scores():
    # Stand 1.2 s, then down to the end of a 9 s clip: onset 0.2 s late, alert 1 s after onset.
    score = score_clip(FALL_CLIP, analysed("T" * 36 + "F" * 234))
    assert score["fall_segments"] == 1 and score["overlapping_fall_segments"] == 1
    assert score["false_fall_segments"] == 0 and score["false_alerts"] == 0
    assert score["onset_error_s"] == pytest.approx(0.2, abs=1e-3)
    assert score["alert_raised"] and score["alert_delay_s"] == pytest.approx(1.2, abs=1e-3)
    assert score["fall_tiou"] == pytest.approx(7.8 / 8.0, abs=1e-3)
    assert score["annotated_time_down_s"] == pytest.approx(8.0)
    assert score["time_down_error_s"] == pytest.approx(-0.2 - 1 / FPS, abs=1e-3)  # ends at the last frame
    # All 270 frames lie in a range. Wrong: 31..35 (stand inside the fall range; at 1.0 s both
    # ranges hold) and, smoothed only, frame 0 (the track is confirmed on its second frame).
    assert score["frames_scored"] == 270
    assert score["correct"] == 270 - 5 - 1 and score["correct_raw"] == 270 - 5


def test_missed_fall_and_early_alert_count_against_the_clip():
    missed = score_clip(FALL_CLIP, analysed("T" * 270))
    assert not missed["alert_raised"] and missed["fall_tiou"] == 0.0 and missed["onset_error_s"] is None
    early = ClipAnnotation("fall/1.mp4", "Fall", FPS, (ActionRange("fall", 3.0, 9.0),))
    score = score_clip(early, analysed("T" * 15 + "F" * 255))  # alert at 1.5 s, before 3.0 s
    assert score["false_alerts"] == 1 and not score["alert_raised"] and score["onset_error_s"] == -2.5


def test_adl_clip_counts_false_fall_segments_and_ignores_flicker():
    flicker = score_clip(ADL_CLIP, analysed("S" * 45 + "F" + "S" * 10 + "FF" + "T" * 32))
    assert flicker["false_fall_segments"] == 0 and flicker["false_alerts"] == 0
    score = score_clip(ADL_CLIP, analysed("T" * 30 + "F" * 40 + "T" * 20))  # down from standing: alerted
    assert score["false_fall_segments"] == 1 and score["false_alerts"] == 1 and score["alert_raised"]
    slow = score_clip(ADL_CLIP, analysed("F" * 40 + "T" * 20))  # first seen down, up within slow_confirm_s
    assert slow["false_fall_segments"] == 1 and slow["false_alerts"] == 0


def test_cli_reads_saved_ndjson_and_prints_json_or_a_table(tmp_path: Path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "annotations.csv").write_text(
        "path,label,fps,classes_seconds_as_published\n"
        "fall/1.mp4,Fall,30,Falling (BW)[1 to 9]; Standing[0 to 1]\n"
        "adl/2.mp4,ADL,30,Sitting[0 to 2]; Walking[1.5 to 3]\n")
    saved = tmp_path / "ndjson"
    (saved / "fall").mkdir(parents=True)
    (saved / "adl").mkdir()
    full = analysed("T" * 36 + "F" * 234)
    lines = full.frames + full.events + [full.summary]
    (saved / "fall" / "1.ndjson").write_text("\n".join(json.dumps(m) for m in lines) + "\n")
    # No summary line in this one: the evaluation replays the frame lines.
    adl_lines = frame_lines("S" * 60 + "T" * 30)
    (saved / "adl" / "2.ndjson").write_text("\n".join(json.dumps(m) for m in adl_lines))

    assert main([str(clips), "--ndjson-dir", str(saved), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["clip"] for c in report["clips"]] == ["fall/1.mp4", "adl/2.mp4"]
    o = report["overall"]
    assert o["fall_clips_alerted"] == 1 and o["false_alerts_adl"] == 0 and o["false_fall_segments_adl"] == 0
    assert o["mean_alert_delay_s"] == pytest.approx(1.2, abs=1e-3)

    assert main([str(clips), "--ndjson-dir", str(saved), "--replay", "--set", "confirm_s=2"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("clip") and "fall/1.mp4" in table
    assert "fall clips alerted: 1/1" in table and "2.20" in table  # the replayed alert delay

    assert main([str(clips), "--ndjson-dir", str(tmp_path / "nowhere")]) == 2
    with pytest.raises(SystemExit):
        main([str(clips), "--ndjson-dir", str(saved), "--set", "no_such_setting=1"])


def _clip_folders() -> list[str]:
    """Every clip folder of the data (videos/*/annotations.csv), found when the tests are collected."""
    import os

    root = Path(os.environ.get("FALLDET_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    found = sorted(p.name for p in (root / "videos").glob("*") if (p / "annotations.csv").is_file())
    return found or ["gmdcsa24-s1"]  # (skips below with the reason when the data is absent)


_REPORTS: dict[str, dict] = {}


def _report(folder: str, model_path: Path, data_dir: Path, tmp_path_factory) -> dict:
    """The shipped model's evaluation of one clip folder, made once per session."""
    clips = data_dir / "videos" / folder
    if not (clips / "annotations.csv").is_file():
        pytest.skip(f"{clips} is missing (set FALLDET_DATA)")
    if folder not in _REPORTS:
        _REPORTS[folder] = evaluate(clips, model=model_path, save_dir=tmp_path_factory.mktemp(folder), log=print)
        print("\n" + format_table(_REPORTS[folder]))
    return _REPORTS[folder]


@pytest.mark.slow
@pytest.mark.parametrize("folder", _clip_folders())
def test_shipped_model_alerts_every_fall_and_no_daily_activity(folder: str, model_path: Path, data_dir: Path,
                                                               tmp_path_factory):
    """Issue 23 acceptance, per clip folder: each fall clip alerted after its annotated start; no
    alert in any daily-activity clip."""
    report = _report(folder, model_path, data_dir, tmp_path_factory)
    for clip in report["clips"]:
        assert clip["frames"] > 0
        if clip["kind"] == "fall":
            assert clip["alert_raised"] and clip["alert_delay_s"] >= 0, clip
        else:
            assert clip["alerts"] == 0, clip


# Measured with the shipped file (models/README.md, "On the clip folders"): what is still missing.
NOT_YET = {
    "gmdcsa24-s1": "fall/15 (a fall from a chair) has two fall segments: a second track starts on the floor",
    "assist-iot": "each frame shows the room from two cameras, so a fall is two tracks and two segments; "
                  "posture right in 0.83 of the annotated frames",
}


@pytest.mark.slow
@pytest.mark.parametrize("folder", [pytest.param(f, marks=pytest.mark.xfail(f in NOT_YET, reason=NOT_YET.get(f, ""),
                                                                            strict=True))
                                    for f in _clip_folders()])
def test_shipped_model_one_fall_segment_and_posture_right(folder: str, model_path: Path, data_dir: Path,
                                                          tmp_path_factory):
    """Issue 23 acceptance, the rest: exactly one fall segment overlapping each annotated fall, and the
    posture right in at least 85 % of the annotated frames (strict xfail where not yet: it fails loudly
    once it passes, so the mark goes)."""
    report = _report(folder, model_path, data_dir, tmp_path_factory)
    for clip in report["clips"]:
        if clip["kind"] == "fall":
            assert clip["overlapping_fall_segments"] == 1, clip
    assert report["overall"]["action_accuracy"] >= 0.85, report["overall"]
