"""An empty environment value of an optional setting means None, as its description promises.

`FALLDET_PIPELINE__DESCENT_S=` ("Empty: always `confirm_s`", docs/service.md) used to stop the
service at start with a float parsing error, so the faster fall rule could not be chosen from the
environment at all (the site-adaptation demo runs its review cameras with it).
"""
from __future__ import annotations

import pytest


def test_empty_optional_settings_are_none(monkeypatch, tmp_path) -> None:
    from service.settings import Settings

    monkeypatch.setenv("FALLDET_STATE_DIR", str(tmp_path))
    for name in ("PIPELINE__DESCENT_S", "PIPELINE__TRACK_ACTIVATION_SCORE", "PIPELINE__TRACK_HIGH_SCORE",
                 "DETECT_FPS", "SCORE_THRESHOLD", "MODEL_WATCH_DIR"):
        monkeypatch.setenv(f"FALLDET_{name}", "")
    s = Settings()
    assert s.pipeline.descent_s is None and s.pipeline.track_activation_score is None
    assert s.pipeline.track_high_score is None and s.detect_fps is None and s.score_threshold is None
    assert s.model_watch_dir is None  # not Path("") = the working folder, watched for any .onnx
    monkeypatch.setenv("FALLDET_PIPELINE__DESCENT_S", "3")
    assert Settings().pipeline.descent_s == 3.0  # a value still counts
    monkeypatch.setenv("FALLDET_PIPELINE__DESCENT_S", "soon")
    with pytest.raises(ValueError):
        Settings()


def test_evaluate_replays_with_the_descent_rule_off() -> None:
    """`python -m service.evaluate --set descent_s=` (the same validator) gives the rule without it."""
    from service.evaluate import _parse_settings
    from service.pipeline import PipelineSettings

    assert _parse_settings(["descent_s="]).descent_s is None
    assert PipelineSettings().descent_s == 2.0  # the shipped default is unchanged
