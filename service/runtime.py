"""The detector at run time: one onnxruntime session over the exported model, no torch.

Pre-processing is exactly that of the evaluation (`python -m training val`: centred letterbox, pad
114, INTER_LINEAR, RGB / 255), so what the service reports is what was scored. The file holds the
final scoring and NMS (the model contract, docs/service.md); this module only letterboxes, batches
and maps boxes back to each frame's pixels.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np
import onnxruntime as ort

from service.cuda_check import cuda_problem
from service.frames import Person

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PAD = 114
DEFAULT_SCORE_THRESHOLD = 0.25  # for models exported without an operating point
DEFAULT_CHUNK = 32  # largest batch sent in one run when the model's batch axis is dynamic
MERGE_IOU = 0.7  # rows of different classes overlapping this much are one person (the graph's NMS IoU)

Provider = str | tuple[str, dict]


def choose_providers(requested: Sequence[Provider] = (), tensorrt: bool = False,
                     trt_cache: Path | None = None) -> list[Provider]:
    """Providers to ask for: the requested ones, else [TensorRT,] CUDA when it can run, then CPU.

    CUDA and TensorRT are left out, requested or not, where CUDA cannot load (`cuda_check`): asking
    for them there only prints onnxruntime's red library error before it falls back to CPU.
    """
    gpu_ok = cuda_problem() is None
    if requested:
        kept = [p for p in requested if gpu_ok or (p if isinstance(p, str) else p[0]) not in (CUDA, TENSORRT)]
        return kept or [CPU]
    available = set(ort.get_available_providers())
    chosen: list[Provider] = []
    if gpu_ok and tensorrt and TENSORRT in available:
        options = {"trt_fp16_enable": True}
        if trt_cache is not None:
            trt_cache.mkdir(parents=True, exist_ok=True)  # built engines are reused across restarts
            options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache)}
        chosen.append((TENSORRT, options))
    if gpu_ok:
        chosen.append(CUDA)
    chosen.append(CPU)
    return chosen


def int8_sibling(model: Path) -> Path:
    """Where the INT8 copy of a model file lives: `fall-detector.onnx` -> `fall-detector.int8.onnx`."""
    return model.with_name(model.stem + ".int8" + model.suffix)


def pick_model_file(model: Path, providers: Sequence[Provider], int8: str = "auto") -> Path:
    """The file to load: the INT8 sibling on a CPU-only session when it exists (`auto`) or always
    (`on`, an error if missing); the FP32 file on a GPU or with `off`. A file already named
    `*.int8.onnx` is taken as given."""
    model = Path(model)
    if int8 == "off" or model.stem.endswith(".int8"):
        return model
    sibling = int8_sibling(model)
    if int8 == "on":
        if not sibling.is_file():
            raise FileNotFoundError(f"FALLDET_INT8=on but {sibling} does not exist (python -m training quantize)")
        return sibling
    on_cpu = all((p if isinstance(p, str) else p[0]) == CPU for p in providers)
    return sibling if on_cpu and sibling.is_file() else model


def runtime_from_settings(settings: "Settings") -> "Runtime":
    """The Runtime the service settings ask for (providers, TensorRT cache under the state folder,
    the INT8 copy of the model on a CPU)."""
    providers = choose_providers(settings.providers, settings.tensorrt, Path(settings.state_dir) / "trt")
    path = pick_model_file(Path(settings.model), providers, settings.int8)
    return Runtime(path, providers, settings.score_threshold, settings.iou_threshold,
                   track_threshold=settings.pipeline.track_low_score)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """Fit `image` (HxWx3 uint8) into size x size keeping its aspect, centred on grey 114.

    Returns (canvas, ratio, left, top): original pixel x maps to x * ratio + left. A side never
    shrinks below one pixel, so a 1 x 700 strip still fits (its short side would round to 0).
    """
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas = np.full((size, size, 3), PAD, np.uint8)
    canvas[top:top + nh, left:left + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, r, left, top


def _operating_point(meta: dict[str, str]) -> float | None:
    """The score threshold chosen on the val split at export (training/calibrate.py), if any."""
    try:
        value = json.loads(meta["operating_point"])["score_threshold"]
    except (KeyError, TypeError, ValueError):
        return None
    return float(value) if isinstance(value, (int, float)) and 0 < value <= 1 else None


def _why_not_gpu(used: str, wanted: list[str]) -> str:
    """The reason a CPU session is not on the GPU, for the one start-up line."""
    if used != CPU:
        return ""
    problem = cuda_problem()
    if problem:
        return f" (CUDA not used: {problem})"
    return f" (asked for {wanted})" if wanted[0] != CPU else ""


class ModelContractError(ValueError):
    """The ONNX file does not follow the model contract (docs/service.md, "The model file")."""


class Runtime:
    """Owns one `onnxruntime.InferenceSession`; thread-compatible (the worker calls it from one thread)."""

    def __init__(self, model_path: Path, providers: Sequence[Provider] | None = None,
                 score_threshold: float | None = None, iou_threshold: float = 0.7,
                 track_threshold: float | None = None, merge_classes: bool = True) -> None:
        """`score_threshold`: what is reported (default: the file's operating point);
        `track_threshold`: the least score returned at all, with `reported=False` under the first
        (default: the score threshold, i.e. no weak boxes); `merge_classes`: rows of several classes
        on one box become one person (False: one person per row, as the file returns them)."""
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"model not found: {model_path} (set FALLDET_MODEL or --model)")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # a missing CUDA library is reported below, once, by us
        requested = choose_providers(list(providers or ()))
        self.session = ort.InferenceSession(str(model_path), options, providers=requested)
        self.model_path = model_path
        self.providers: list[str] = self.session.get_providers()
        self.iou_threshold = float(iou_threshold)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.operating_point: float | None = _operating_point(self.metadata)
        if score_threshold is not None:
            self.score_threshold, self.score_threshold_source = float(score_threshold), "settings"
        elif self.operating_point is not None:
            self.score_threshold, self.score_threshold_source = self.operating_point, "model operating point"
        else:
            self.score_threshold, self.score_threshold_source = DEFAULT_SCORE_THRESHOLD, "default"
        self.merge_classes = merge_classes
        self.track_threshold = (self.score_threshold if track_threshold is None
                                else min(float(track_threshold), self.score_threshold))
        self._read_contract()
        wanted = [p if isinstance(p, str) else p[0] for p in requested]
        log.info("onnxruntime runs %s on %s%s; imgsz %d, classes %s, score threshold %.4g (%s)",
                 model_path.name, self.providers[0], _why_not_gpu(self.providers[0], wanted), self.imgsz,
                 self.names, self.score_threshold, self.score_threshold_source)

    def _read_contract(self) -> None:
        meta = self.metadata
        missing = [k for k in ("names", "imgsz") if k not in meta]
        if missing:
            raise ModelContractError(f"model metadata lacks {missing}")
        self.names: list[str] = list(json.loads(meta["names"]))
        self.imgsz: int = int(meta["imgsz"])
        self.stride: int = int(meta.get("stride", 32))
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "images" not in inputs:
            raise ModelContractError("model has no input 'images'")
        if "detections" not in [o.name for o in self.session.get_outputs()]:
            raise ModelContractError("model has no output 'detections'")
        batch = inputs["images"].shape[0]
        self.max_chunk: int = batch if isinstance(batch, int) and batch > 0 else DEFAULT_CHUNK
        self.extra_inputs: dict[str, np.ndarray] = {}
        if "score_threshold" in inputs:
            self.extra_inputs["score_threshold"] = np.array([self.track_threshold], np.float32)
        if "iou_threshold" in inputs:
            self.extra_inputs["iou_threshold"] = np.array([self.iou_threshold], np.float32)

    @property
    def device(self) -> str:
        """`"cuda"`, `"tensorrt"` or `"cpu"`: the provider that runs the model."""
        return {CUDA: "cuda", TENSORRT: "tensorrt"}.get(self.providers[0], "cpu")

    def detect(self, images: list[np.ndarray], rgb: bool = False) -> list[list[Person]]:
        """Persons in each image (HxWx3 uint8, BGR unless `rgb`), boxes in that image's pixels."""
        results: list[list[Person]] = []
        for start in range(0, len(images), self.max_chunk):
            results.extend(self._detect_chunk(images[start:start + self.max_chunk], rgb))
        return results

    def warmup(self, batch: int = 1) -> None:
        """One run on grey frames, so the first real frame does not pay for lazy initialisation."""
        self.detect([np.full((self.imgsz, self.imgsz, 3), PAD, np.uint8)] * batch)

    def _detect_chunk(self, images: list[np.ndarray], rgb: bool) -> list[list[Person]]:
        size = self.imgsz
        batch = np.empty((len(images), 3, size, size), np.float32)
        geometry = []
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected HxWx3 uint8 images, got {image.shape} {image.dtype}")
            canvas, r, left, top = letterbox(image, size)
            chw = canvas.transpose(2, 0, 1) if rgb else canvas[:, :, ::-1].transpose(2, 0, 1)
            np.divide(chw, 255.0, out=batch[i], dtype=np.float32)
            geometry.append((r, left, top, image.shape[1], image.shape[0]))
        out = self.session.run(["detections"], {"images": batch, **self.extra_inputs})[0]
        if out.ndim != 3 or out.shape[0] != len(images) or out.shape[2] != 6:
            raise ModelContractError(f"'detections' has shape {out.shape}, expected [{len(images)}, K, 6]")
        return [self._to_persons(rows, *geo) for rows, geo in zip(out, geometry)]

    def _to_persons(self, rows: np.ndarray, r: float, left: int, top: int, w: int, h: int) -> list[Person]:
        """Rows `x1 y1 x2 y2 score class` in letterbox pixels -> persons in frame pixels, clipped.

        Rows of other classes on the same box (IoU >= MERGE_IOU with a better row) are merged into
        that person's `class_scores` instead of becoming another person."""
        keep = (rows[:, 4] > 0) & (rows[:, 4] >= self.track_threshold)
        keep &= (rows[:, 5] >= 0) & (rows[:, 5] < len(self.names))
        rows = rows[keep]  # float32 arithmetic, exactly as the evaluator maps boxes
        rows = rows[np.argsort(-rows[:, 4], kind="stable")]
        xs = np.clip((rows[:, [0, 2]] - left) / r, 0, w)
        ys = np.clip((rows[:, [1, 3]] - top) / r, 0, h)
        boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1) if len(rows) else np.zeros((0, 4), np.float32)
        owner = merge_rows(boxes, rows[:, 5].astype(int), MERGE_IOU) if self.merge_classes else np.arange(len(rows))
        persons: list[Person] = []
        scores: list[list[float]] = []
        index_of: dict[int, int] = {}
        for k, (box, score, cls) in enumerate(zip(boxes, rows[:, 4], rows[:, 5])):
            class_id = int(cls)
            if owner[k] == k:
                index_of[k] = len(persons)
                persons.append(Person(tuple(float(v) for v in box), float(score), class_id,
                                      action=self.names[class_id],
                                      reported=bool(score >= self.score_threshold)))
                scores.append([0.0] * len(self.names))
            row_scores = scores[index_of[int(owner[k])]]
            row_scores[class_id] = max(row_scores[class_id], float(score))
        for person, class_scores in zip(persons, scores):
            person.class_scores = tuple(round(v, 4) for v in class_scores)
        return persons


def merge_rows(boxes: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """For rows sorted best first: the index of the row each one belongs to (itself when it leads).

    A row joins the first better row of another class that it overlaps by `iou` or more and that
    has no row of its class yet; otherwise it is a person of its own."""
    n = len(boxes)
    owner = np.arange(n)
    if n < 2:
        return owner
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    leaders: list[int] = []
    held: dict[int, set[int]] = {}
    for k in range(n):
        for lead in leaders:
            if int(classes[k]) in held[lead]:
                continue
            iw = min(x2[k], x2[lead]) - max(x1[k], x1[lead])
            ih = min(y2[k], y2[lead]) - max(y1[k], y1[lead])
            inter = max(iw, 0.0) * max(ih, 0.0)
            union = area[k] + area[lead] - inter
            if union > 0 and inter / union >= iou:
                owner[k] = lead
                held[lead].add(int(classes[k]))
                break
        else:
            leaders.append(k)
            held[k] = {int(classes[k])}
    return owner
