"""Issue 25, part 2, items 10 and 11: the docs say what the code does (no stale schema version, no
repeated sentence) and the README says, per data source, where its public original is."""
from __future__ import annotations

import re

from conftest import REPO_ROOT
from service.store import MIGRATIONS


def test_alerts_doc_names_the_current_schema_version_and_streams_doc_repeats_nothing():
    alerts = (REPO_ROOT / "docs" / "alerts.md").read_text()
    assert f"version {len(MIGRATIONS)} adds" in alerts
    lines = [x.strip() for x in (REPO_ROOT / "docs" / "streams.md").read_text().splitlines() if x.strip()]
    assert not [a for a, b in zip(lines, lines[1:]) if a == b or b.startswith(a) and a.endswith(".")]


def test_readme_data_step_names_each_public_original_and_the_skipping_tests():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "obtain the team's data archive" not in readme
    for original in ("laifiilhem/fall-detection-yolov5-tensorrt-jetson", "ytrecycle-lzqa8/elder_falldanger",
                     "DMHACKERZ/TeleICU-Monitoring-System", "start-nfzlc/fall_detection",
                     "nikborisovkpi/DIPLOMA_FallDetection_YOLO", "10.5281/zenodo.12921216"):
        assert original in readme, original
    assert re.search(r"tests that need it skip", readme)
    assert "state/api_key" in readme and "FALLDET_API_KEYS" in readme and "--ssl-certfile" in readme
