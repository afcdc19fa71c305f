"""A faster file for the CPU: static INT8 quantization (QDQ) of an exported detector.

Only the convolutions are quantized (weights per channel, int8; activations uint8), calibrated on
val images letterboxed exactly as the service feeds them; the head's decoding, the quality
reweighting and the NMS stay in float. onnxruntime runs the QDQ convolutions with integer kernels
(VNNI on CPUs that have it). The file keeps the FP32 file's contract and metadata, plus
`quantization` (what was done, on which images); whether it costs accuracy is measured per source
with the independent evaluator (models/README.md), not assumed.

usage: python -m training quantize --model models/fall-detector.onnx --out models/fall-detector.int8.onnx
"""
from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnx

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """As service/runtime.py: centred, pad 114, INTER_LINEAR, RGB in [0, 1], CHW."""
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[top:top + nh, left:left + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return (canvas[:, :, ::-1].transpose(2, 0, 1) / 255.0).astype(np.float32)


def calibration_images(folders: list[Path], count: int, seed: int = 0) -> list[Path]:
    """`count` images spread over the folders (equal shares), the same ones for the same seed."""
    rng = random.Random(seed)
    per = max(1, count // max(1, len(folders)))
    chosen: list[Path] = []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        chosen += rng.sample(files, min(per, len(files)))
    return chosen


class _Reader:
    """onnxruntime's CalibrationDataReader: one letterboxed image per call."""

    def __init__(self, images: list[Path], size: int) -> None:
        self._images, self._size = list(images), size

    def get_next(self) -> dict | None:
        while self._images:
            image = cv2.imread(str(self._images.pop(0)), cv2.IMREAD_COLOR)
            if image is not None:
                return {"images": letterbox(image, self._size)[None]}
        return None


def quantize(model: Path, out: Path, images: list[Path]) -> dict:
    """Write the INT8 file; returns the `quantization` metadata it carries."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = onnx.load(str(model))
    meta = {p.key: p.value for p in src.metadata_props}
    size = int(meta["imgsz"])
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), _Reader(images, size), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"], per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    info = {"method": "onnxruntime quantize_static, QDQ, Conv only, weights int8 per channel, "
                      "activations uint8, MinMax calibration",
            "calibration_images": len(images), "from": model.name}
    q = onnx.load(str(out))
    del q.metadata_props[:]
    for key, value in {**meta, "quantization": json.dumps(info)}.items():
        q.metadata_props.add(key=key, value=value)
    onnx.save(q, str(out))
    return info
