"""ONNX export: network + quality-reweighted scoring + class-aware NMS in one graph (the model contract, docs/service.md).

Graph: images [N,3,S,S] -> boxes [N,A,4] and final scores [N,A,C] -> NonMaxSuppression (per class)
-> the best K = max_det (batch, class, box) triples per image -> detections [N,K,6], zero rows past
the last detection. `score_threshold` and `iou_threshold` are graph inputs backed by initializers,
so callers may omit them (defaults) or feed their own. onnxruntime lists them under
`get_overridable_initializers()`, not `get_inputs()`. The score default is 0.001 (evaluation
protocol: every detection counts for mAP); the service feeds its own alert threshold.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from training.engine import load_checkpoint_model


class _NMS(torch.autograd.Function):
    """ONNX NonMaxSuppression; the eager forward only has to produce the right type for tracing."""

    @staticmethod
    def forward(ctx, boxes, scores, max_out, iou_thr, score_thr):  # noqa: D102
        n, c, a = scores.shape
        k = min(a, 8)
        b = torch.arange(n).repeat_interleave(c * k)
        cl = torch.arange(c).repeat_interleave(k).repeat(n)
        i = torch.arange(k).repeat(n * c)
        return torch.stack([b, cl, i], 1).to(torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_out, iou_thr, score_thr):  # noqa: D102
        return g.op("NonMaxSuppression", boxes, scores, max_out, iou_thr, score_thr, center_point_box_i=0)


class ExportWrapper(nn.Module):
    """The detector plus post-processing, traced into one ONNX graph."""

    def __init__(self, model: nn.Module, max_det: int = 300) -> None:
        super().__init__()
        self.model, self.max_det = model, max_det

    def forward(self, images: torch.Tensor, score_threshold: torch.Tensor, iou_threshold: torch.Tensor) -> torch.Tensor:
        boxes, scores = self.model.predict(images)  # [N,A,4], [N,A,C]
        n, a, c = scores.shape
        max_out = torch.tensor([self.max_det], dtype=torch.int64)
        sel = _NMS.apply(boxes, scores.transpose(1, 2).contiguous(), max_out, iou_threshold, score_threshold)  # [M,3]
        bi, ci, ai = sel[:, 0], sel[:, 1], sel[:, 2]
        # Dense [N, C*A + K] of kept scores (zeros elsewhere); the extra K zero columns keep top-k valid
        # even when fewer than K candidates exist (small inputs).
        dense = torch.zeros(n, c * a + self.max_det, dtype=scores.dtype)
        dense = dense.index_put((bi, ci * a + ai), scores[bi, ai, ci])
        top, idx = dense.topk(self.max_det, dim=1)  # [N,K] best first
        valid = (top > 0).unsqueeze(-1).to(scores.dtype)
        idx = idx.clamp(max=c * a - 1)
        box_idx, cls = idx % a, (idx // a).to(scores.dtype)
        picked = torch.gather(boxes, 1, box_idx.unsqueeze(-1).expand(n, self.max_det, 4))
        return torch.cat([picked, top.unsqueeze(-1), cls.unsqueeze(-1)], -1) * valid


def export_onnx(weights: str | Path, out: str | Path, imgsz: int = 0, max_det: int = 300, score_threshold: float = 0.001,
                iou_threshold: float = 0.7, metrics_json: str | None = None, opset: int = 17,
                calibrate_data: str | Path | None = None, calibrate: bool = False, calibrate_limit: int = 0) -> Path:
    """Write the ONNX file; with `calibrate` also its operating point on the val split of `calibrate_data`
    (a data config; default: the one the checkpoint trained on), its first `calibrate_limit` images
    per source when set (a fine-tune's budget cannot afford every val image)."""
    model, ck = load_checkpoint_model(weights, "cpu")
    tc = ck["train_config"]
    imgsz = imgsz or tc["imgsz"]
    calibrate_data = calibrate_data or (tc.get("data") if calibrate else None)
    op = (_operating_point(model, calibrate_data, ck["names"], imgsz, iou_threshold, calibrate_limit)
          if calibrate_data else None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(model.float().eval(), max_det).eval()
    x = torch.zeros(1, 3, imgsz, imgsz)
    st = torch.tensor([score_threshold], dtype=torch.float32)
    it = torch.tensor([iou_threshold], dtype=torch.float32)
    torch.onnx.export(wrapper, (x, st, it), str(out), opset_version=opset, dynamo=False,
                      input_names=["images", "score_threshold", "iou_threshold"], output_names=["detections"],
                      dynamic_axes={"images": {0: "N"}, "detections": {0: "N"}})
    m = onnx.load(str(out))
    # threshold inputs become optional: an initializer with the input's name is its default value
    m.graph.initializer.extend([numpy_helper.from_array(np.array([score_threshold], np.float32), "score_threshold"),
                                numpy_helper.from_array(np.array([iou_threshold], np.float32), "iou_threshold")])
    out_dims = m.graph.output[0].type.tensor_type.shape.dim
    for d, v in zip(out_dims, ("N", max_det, 6)):
        d.Clear()
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v
    metrics = json.loads(Path(metrics_json).read_text()) if metrics_json else ck.get("metrics", {})
    protocol = {k: tc[k] for k in ("preset", "scale", "imgsz", "epochs", "batch", "nbs", "lr0", "seed", "close_mosaic",
                                   "warmup_epochs", "epoch_size", "camera_aug", "device") if k in tc}
    protocol["data"] = Path(tc.get("data", "")).name
    accumulate = ck.get("accumulate", max(round(tc.get("nbs", 64) / tc["batch"]), 1))
    meta = {"names": json.dumps(ck["names"]), "imgsz": str(imgsz), "stride": str(model.stride), "max_det": str(max_det),
            "model_config": json.dumps(ck["model_config"]), "training_protocol": json.dumps(protocol),
            "epochs_trained": str(ck["epoch"] + 1), "nbs": str(tc.get("nbs", 64)), "accumulate": str(accumulate),
            "metrics": json.dumps({k: metrics.get(k) for k in ("mAP50", "mAP50_95", "per_class", "fitness", "sources")
                                   if k in metrics}),
            "description": (f"YOLO11 person/action detector ({'/'.join(ck['names'])}; backbone, SPDConv, Detect_LQE "
                            "and Inner-CIoU switches in model_config). Input letterboxed RGB [0,1], pad 114. Output "
                            "rows x1,y1,x2,y2,score,class in input pixels; score is quality-reweighted; class-aware "
                            "NMS in the graph.")}
    if op is not None:
        meta["operating_point"] = json.dumps(op)
    for k, v in meta.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    m.producer_name = "falldet"
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return out


def _operating_point(model: nn.Module, data_yaml: str | Path, names: list[str], imgsz: int, iou: float,
                     limit: int = 0) -> dict:
    """The F1 score threshold on the (pooled) val split of `data_yaml` (training/calibrate.py says why)."""
    from training.calibrate import operating_point
    from training.data.dataset import DetectionDataset, load_data_yaml
    from training.evaluate import predict_dataset

    spec = load_data_yaml(data_yaml)
    if spec.names != list(names):
        raise ValueError(f"{data_yaml} names {spec.names} differ from the checkpoint's {names}")
    ds = DetectionDataset.from_spec(spec, "val", imgsz, None, limit=limit)
    dets = predict_dataset(model.float().eval(), ds, iou=iou)
    # named from each data folder down, no local path in the file
    name = " + ".join(f"{s.root.name}/{s.val.resolve().relative_to(s.root.resolve())}"
                      if s.val.resolve().is_relative_to(s.root.resolve()) else s.val.name
                      for s in spec.sources if s.val is not None)
    return {**operating_point(ds, dets), "split": name + (f" (first {limit} images of each)" if limit else "")}
