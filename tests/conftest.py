"""Shared fixtures: where the repository, data and model are, the shared video clips, a tiny
contract-following ONNX model for tests that need a session but not the trained detector, and a
TestClient on an app built by the factory with a temp state folder and a known API key.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-key-0123456789"
CLIPS = Path("videos") / "gmdcsa24-s1"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """`FALLDET_DATA`, default `../shared/data` relative to the repository."""
    return Path(os.environ.get("FALLDET_DATA") or REPO_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The shipped detector; tests that need it skip (with the reason) until it exists."""
    path = REPO_ROOT / "models" / "fall-detector.onnx"
    if not path.is_file():
        pytest.skip(f"{path.relative_to(REPO_ROOT)} is missing (the lead exports it from training)")
    return path




@dataclass(frozen=True)
class Clip:
    """One annotated clip of the shared GMDCSA24 subset (annotations.csv)."""

    path: Path
    label: str  # "Fall" or "ADL"
    fps: float
    frames: int
    fall_start_frame: int | None
    fall_end_frame: int | None

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


def _clips(data_dir: Path) -> list[Clip]:
    folder = data_dir / CLIPS
    table = folder / "annotations.csv"
    if not table.is_file():
        pytest.skip(f"{table} is missing (set FALLDET_DATA)")
    with table.open(newline="") as f:
        return [Clip(path=folder / row["path"], label=row["label"], fps=float(row["fps"]),
                     frames=int(row["frames"]),
                     fall_start_frame=int(row["fall_start_frame"]) if row["fall_start_frame"] else None,
                     fall_end_frame=int(row["fall_end_frame"]) if row["fall_end_frame"] else None)
                for row in csv.DictReader(f)]


@pytest.fixture(scope="session")
def fall_clips(data_dir: Path) -> list[Clip]:
    return [c for c in _clips(data_dir) if c.label == "Fall"]


@pytest.fixture(scope="session")
def adl_clips(data_dir: Path) -> list[Clip]:
    return [c for c in _clips(data_dir) if c.label == "ADL"]


@pytest.fixture(scope="session")
def val_images(data_dir: Path) -> list[Path]:
    folder = data_dir / "fall-action" / "val" / "images"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing (set FALLDET_DATA)")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


# -- a tiny model that follows the contract --------------------------------------------------------
TINY_ROWS = [  # x1 y1 x2 y2 score class, in pixels of the 64 x 64 letterboxed input, best first
    [8.0, 16.0, 40.0, 56.0, 0.9, 0.0],
    [30.0, 2.0, 60.0, 30.0, 0.6, 2.0],
    [0.0, 0.0, 10.0, 10.0, 0.1, 1.0],  # below the default 0.25 threshold
]


def make_tiny_model(path: Path, rows: list[list[float]] = TINY_ROWS, imgsz: int = 64, k: int = 8,
                    fixed_batch: int | None = None, metadata: dict[str, str] | None = None) -> Path:
    """An ONNX file with the contract's input, output and metadata that returns `rows` for every
    image (zero-padded to K): enough to test batching, box mapping and the API without the detector."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    table = np.zeros((1, k, 6), np.float32)
    table[0, :len(rows)] = np.asarray(rows, np.float32)
    batch = fixed_batch if fixed_batch else "N"
    graph = helper.make_graph(
        [helper.make_node("Shape", ["images"], ["shape"]),
         helper.make_node("Slice", ["shape", "zero", "one"], ["n"]),
         helper.make_node("Concat", ["n", "one", "one"], ["reps"], axis=0),
         helper.make_node("Tile", ["table", "reps"], ["detections"])],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [batch, k, 6])],
        initializer=[numpy_helper.from_array(table, "table"),
                     numpy_helper.from_array(np.array([0], np.int64), "zero"),
                     numpy_helper.from_array(np.array([1], np.int64), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in ({"names": '["fall", "sit", "stand"]', "imgsz": str(imgsz), "stride": "32"}
                       | (metadata or {})).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


# -- apps ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    return {"X-API-Key": API_KEY}


@pytest.fixture(scope="session")
def runtime(model_path: Path):
    """The shipped detector, loaded once per test session (CPU unless a GPU is present)."""
    from service.runtime import Runtime

    return Runtime(model_path)


def metric_sum(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples in Prometheus text whose labels include `labels`."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


def load_script(relative: str):
    """A repository script (benchmarks/, scripts/: not packages) imported as a module for its tests."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PLUMBING_PIPELINE = {"confirm_s": 1.0, "descent_s": None}


def make_settings(tmp_path: Path, **overrides):
    """Settings for a test app: its own state folder, the known key, nothing read from the repo's state."""
    from service.settings import Settings

    # every frame analysed unless a test sets detect_fps (the service's default is 5 a second), and
    # every fall confirmed after 1 s: these tests are about the plumbing (the tiny model's box is
    # `fall` from the first frame; the fall rules' own timing is tested in test_events/test_posture)
    values = {"state_dir": tmp_path / "state", "api_keys": [API_KEY], "max_wait_ms": 2.0, "detect_fps": None,
              "pipeline": PLUMBING_PIPELINE} | overrides
    return Settings(**values)


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator:
    """`make_client(runtime, **settings)` -> a started TestClient (lifespan run); closed at teardown."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    clients = []

    def make(runtime, **overrides) -> TestClient:
        app = create_app(make_settings(tmp_path, **overrides), runtime=runtime)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def app_client(make_client, runtime):
    """A TestClient on the real detector; send `headers=auth` (the key is not set by default)."""
    return make_client(runtime)


# -- short clips -----------------------------------------------------------------------------------
def cut_clip(src: Path, dst: Path, frames: int, codec: str = "libx264") -> Path:
    """Re-encode the first `frames` frames of `src` into `dst` (made in a temp folder, never committed)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream_in = inp.streams.video[0]
        stream = out.add_stream(codec, rate=round(float(stream_in.average_rate or 25)))
        stream.width, stream.height, stream.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        for i, frame in enumerate(inp.decode(stream_in)):
            if i >= frames:
                break
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dst


def count_frames(path: Path) -> int:
    """Frames PyAV decodes from `path`, counted independently of the service."""
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


@pytest.fixture(scope="session")
def short_clip(fall_clips, tmp_path_factory) -> Path:
    """The first 24 frames of the first fall clip (13.mp4 starts falling at frame 12)."""
    return cut_clip(fall_clips[0].path, tmp_path_factory.mktemp("clips") / "short.mp4", 24)


@pytest.fixture
def tiny_client(make_client, tiny_model):
    """A TestClient on the tiny contract model: the whole API, fast, without the trained detector."""
    from service.runtime import Runtime

    return make_client(Runtime(tiny_model, ["CPUExecutionProvider"]))
