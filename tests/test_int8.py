"""The INT8 copy of the model: made by `python -m training quantize`, chosen by the service on a CPU
when it sits beside the FP32 file, and it finds the same people."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from service.runtime import CPU, CUDA, Runtime, int8_sibling, pick_model_file


def test_the_int8_sibling_is_chosen_on_a_cpu_only(tmp_path, tiny_model) -> None:
    model = tmp_path / "fall-detector.onnx"
    shutil.copy(tiny_model, model)
    assert pick_model_file(model, [CPU]) == model  # no copy yet: the FP32 file
    with pytest.raises(FileNotFoundError, match="quantize"):
        pick_model_file(model, [CPU], "on")
    shutil.copy(tiny_model, int8_sibling(model))
    assert int8_sibling(model).name == "fall-detector.int8.onnx"
    assert pick_model_file(model, [CPU]) == int8_sibling(model)
    assert pick_model_file(model, [CUDA, CPU]) == model  # a GPU runs the FP32 file
    assert pick_model_file(model, [CPU], "off") == model
    assert pick_model_file(int8_sibling(model), [CUDA, CPU]) == int8_sibling(model)  # asked for by name


@pytest.mark.slow
def test_quantized_shipped_model_keeps_the_contract_and_finds_the_same_people(model_path, val_images, tmp_path) -> None:
    from training.quantize import quantize
    out = tmp_path / "m.int8.onnx"
    info = quantize(model_path, out, val_images[:32])
    assert info["calibration_images"] == 32 and out.stat().st_size < model_path.stat().st_size / 2
    # every confident FP32 person (>= 0.3) is found by the INT8 file (>= 0.2: a score may move a little)
    fp32, int8 = Runtime(model_path, [CPU], score_threshold=0.3), Runtime(out, [CPU], score_threshold=0.2)
    assert int8.names == fp32.names and int8.imgsz == fp32.imgsz and "quantization" in int8.metadata
    matched = total = 0
    for path in val_images[32:60]:
        image = cv2.imread(str(path))
        a, b = fp32.detect([image])[0], int8.detect([image])[0]
        for p in a:
            total += 1
            boxes = np.array([q.box for q in b]).reshape(-1, 4)
            if len(boxes):
                lt, rb = np.maximum(boxes[:, :2], p.box[:2]), np.minimum(boxes[:, 2:], p.box[2:])
                inter = np.clip(rb - lt, 0, None).prod(1)
                area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
                matched += bool((inter / (area(boxes) + area(np.array(p.box)) - inter) > 0.7).any())
    assert total >= 10 and matched / total >= 0.8, (matched, total)
