"""Service settings from the environment (`FALLDET_*`), one typed object for the whole service.

Nested groups use `__`: `FALLDET_PIPELINE__CONFIRM_S=1.5`, `FALLDET_MQTT__HOST=broker`. Lists
(`FALLDET_API_KEYS`, `FALLDET_PROVIDERS`) are comma-separated. Paths under the state folder
follow `FALLDET_STATE_DIR` unless set on their own. The API keys are not invented here: the app
factory makes a random one at start when the list is empty (see `service/app.py`).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal, Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.clips import ClipSettings
from service.delivery.mqtt import MqttSettings
from service.delivery.webhooks import WebhookSettings
from service.pipeline import PipelineSettings, empty_is_none
from service.sources.rtsp import RtspSettings
from service.store import RetentionSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "fall-detector.onnx"


def default_data_dir() -> Path:
    """`FALLDET_DATA`, else `../shared/data` beside the repository (tests and tools use this too)."""
    return Path(os.environ.get("FALLDET_DATA") or REPO_ROOT.parent / "shared" / "data")


def _split_commas(value: object) -> object:
    """`"a, b,,c"` -> `["a", "b", "c"]`; lists (from code or a JSON env value) pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything the service reads from its environment; every field is `FALLDET_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="FALLDET_", env_nested_delimiter="__", extra="ignore",
                                      validate_default=True)

    model: Path = Field(DEFAULT_MODEL, description="ONNX detector to load (contract: docs/service.md, \"The model file\")")
    int8: Literal["auto", "on", "off"] = Field("auto", description=(
        "use the model's INT8 copy (`fall-detector.int8.onnx` beside it, made by `python -m training "
        "quantize`): auto = when it exists and the session runs on the CPU; on = always; off = never"))
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="onnxruntime execution providers in order of preference, comma-separated; "
                    "empty: CUDA when this onnxruntime has it, then CPU")
    tensorrt: bool = Field(False, description="try the TensorRT provider before CUDA (engine cache "
                                              "under STATE_DIR/trt); only used when PROVIDERS is empty")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="accepted API keys, comma-separated; empty: one random key is made at start and "
                    "printed once")
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="admin API keys, comma-separated: only these may swap the model (PUT /v1/model, "
                    "POST /v1/model/rollback); they also work as ordinary keys. Empty: swaps are off")
    model_watch_dir: Path | None = Field(None, description="a folder watched for new ONNX files: the newest "
                                                            "*.onnx put there (complete, unchanged for two "
                                                            "polls) is checked and swapped in without a "
                                                            "restart (docs/site-adaptation.md); empty: no watch")
    model_watch_interval_s: float = Field(5.0, gt=0, description="seconds between two looks at MODEL_WATCH_DIR")
    max_model_mb: float = Field(200, gt=0, description="largest model file accepted by PUT /v1/model, MiB")
    state_dir: Path = Field(Path("state"), description="folder for the alert store, snapshots and "
                                                        "the stream list (relative to the working dir)")
    db: Path | None = Field(None, description="alert store SQLite file; default STATE_DIR/alerts.db")
    snapshot_dir: Path | None = Field(None, description="alert snapshots (JPEG); default "
                                                         "STATE_DIR/snapshots")
    clip_dir: Path | None = Field(None, description="fall clips (MP4) of live cameras; default "
                                                     "STATE_DIR/clips (uploads' clips: its uploads/ folder)")
    clips: ClipSettings = Field(default_factory=ClipSettings, description="frame buffer and MP4 clip of "
                                                                          "every fall (docs/alerts.md)")
    streams_file: Path | None = Field(None, description="registered cameras (JSON list of {id, url}), "
                                                         "restored at start; default "
                                                         "STATE_DIR/streams.json")
    data: Path = Field(default_factory=default_data_dir, description="shared data folder (tests, "
                                                                      "benchmarks)")
    max_upload_mb: float = Field(200, gt=0, description="largest accepted upload (image or video), MiB; "
                                                         "larger: 413")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest image or video frame (width x "
                                                                "height) accepted, read from the header "
                                                                "before decoding; larger: 413 (image), "
                                                                "400 (video)")
    max_concurrent_videos: int = Field(2, ge=1, description="most POST /v1/videos analyses running at "
                                                            "once; more: 429 with Retry-After, before "
                                                            "the upload is read")
    video_client_timeout_s: float = Field(60.0, gt=0, description="a video analysis whose client takes no "
                                                                  "output for this long is stopped and "
                                                                  "its resources freed")
    max_streams: int = Field(16, ge=0, description="most cameras registered at once")
    detect_fps: float | None = Field(5.0, gt=0, le=120, description=(
        "frames a second analysed per camera unless the camera sets its own (`detect_fps` in POST "
        "/v1/streams); the other frames still feed fall clips. Empty: every frame. Capacity is then "
        "about cameras x detect_fps inferences a second (docs/service.md)"))
    max_batch: int = Field(8, ge=1, description="most frames in one inference call")
    max_wait_ms: float = Field(4.0, ge=0, description="longest the worker waits to fill a batch")
    score_threshold: float | None = Field(None, ge=0, le=1, description=(
        "minimum detection score; empty: the model's operating point (metadata `operating_point`, "
        "chosen on the val split at export), else 0.25"))
    iou_threshold: float = Field(0.7, ge=0, le=1, description="NMS IoU threshold (when the model "
                                                               "takes it as an input)")
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings,
                                       description="tracking, smoothing and fall rules")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="MQTT delivery and "
                                                                        "cross-pod events")
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings, description="signed webhooks")
    rtsp: RtspSettings = Field(default_factory=RtspSettings, description="camera readers: timeouts, "
                                                                         "reconnect backoff")
    retention: RetentionSettings = Field(default_factory=RetentionSettings, description="how long alert "
                                                                                        "snapshots are kept")
    shard_index: int = Field(0, ge=0, description="this pod's shard: it runs the cameras whose id hashes "
                                                  "to it (Kubernetes StatefulSet ordinal)")
    shard_count: int = Field(1, ge=1, description="number of shards (pods) the cameras are spread over")

    _split = field_validator("providers", "api_keys", "admin_keys", mode="before")(_split_commas)

    _empty = field_validator("detect_fps", "score_threshold", "model_watch_dir", mode="before")(empty_is_none)

    @model_validator(mode="after")
    def _fill_state_paths(self) -> "Settings":
        """Paths left unset live under the state folder; the shard must exist."""
        if self.shard_index >= self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} must be below shard_count {self.shard_count}")
        if self.db is None:
            self.db = self.state_dir / "alerts.db"
        if self.snapshot_dir is None:
            self.snapshot_dir = self.state_dir / "snapshots"
        if self.clip_dir is None:
            self.clip_dir = self.state_dir / "clips"
        if self.streams_file is None:
            self.streams_file = self.state_dir / "streams.json"
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once (tests build their own `Settings` instead)."""
    return Settings()
