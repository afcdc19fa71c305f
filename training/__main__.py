"""`python -m training train|val|export|info|compare|finetune ...` (names pinned: docs/training.md;
finetune: docs/site-adaptation.md)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from training.engine import TrainConfig

# The product model trains on every source; the paper's ablation on fall-action alone (--data PAPER_DATA).
DEFAULT_DATA = str(Path(__file__).parent / "configs" / "all-sources.yaml")
PAPER_DATA = str(Path(os.environ.get("FALLDET_DATA", "../shared/data")) / "fall-action" / "data.yaml")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    p.add_argument("--preset", default=defaults.preset, help="baseline, A..G (paper Table 3), the same with -mnv2 "
                   "(the shipped backbone; G-mnv2 is shipped)")
    p.add_argument("--scale", default=defaults.scale, choices=["n", "s"])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--imgsz", type=int, default=defaults.imgsz)
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch", type=int, default=defaults.batch)
    p.add_argument("--lr0", type=float, default=defaults.lr0)
    p.add_argument("--nbs", type=int, default=defaults.nbs,
                   help="nominal batch: gradients accumulate over round(nbs/batch) batches per step")
    p.add_argument("--close-mosaic", type=int, default=defaults.close_mosaic)
    p.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device)
    p.add_argument("--workers", type=int, default=defaults.workers)
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument("--limit", type=int, default=0, help="first N train images only")
    p.add_argument("--val-limit", type=int, default=0)
    p.add_argument("--box-loss", choices=["ciou", "inner_ciou"], default=None, help="override the preset")
    p.add_argument("--inner-ratio", type=float, default=None)
    p.add_argument("--val-interval", type=int, default=1, help="validate every N epochs (and after the last)")
    p.add_argument("--epoch-size", type=int, default=0,
                   help="samples per epoch, drawn by source weight (default: the train split's size)")
    p.add_argument("--camera-aug", action="store_true",
                   help="augment for unseen cameras: grey, blur, fisheye, wider scale (docs/training.md)")
    p.add_argument("--backbone-init", choices=["imagenet", "ssdlite-person"], default=None,
                   help="pretrained MobileNetV2 weights: ImageNet classification or the SSDLite person detector")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="start a pretrained-backbone preset from random weights")
    p.add_argument("--out", default=None, help="run folder (default runs/train/<preset>-<imgsz>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast on the CPU (AVX512-BF16/AMX machines)")


def cmd_train(a: argparse.Namespace) -> int:
    from training.engine import Trainer
    out = a.out or f"runs/train/{a.preset}-{a.imgsz}"
    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(a).items() if k in known and k != "out"}, out=out,
                      progress=not a.no_progress)
    resume = Path(out) / "last.pt" if a.resume else None
    if resume is not None and not resume.exists():
        print(f"--resume: {resume} does not exist", file=sys.stderr)
        return 2
    metrics = Trainer(cfg, resume=resume).train()
    print(json.dumps(metrics))
    return 0


def cmd_val(a: argparse.Namespace) -> int:
    import torch

    from training.data.dataset import DetectionDataset, load_data_yaml
    from training.engine import evaluate_detections, load_checkpoint_model
    from training.evaluate import confusion_matrix, plot_confusion, predict_dataset
    model, ck = load_checkpoint_model(a.weights, a.device)
    model = model.to(memory_format=torch.channels_last)
    data = a.data or ck["train_config"].get("data") or DEFAULT_DATA
    spec = load_data_yaml(data)
    if spec.names != list(ck["names"]):
        print(f"val: {data} names {spec.names} differ from the checkpoint's {ck['names']}", file=sys.stderr)
        return 2
    imgsz = a.imgsz or ck["train_config"]["imgsz"]
    ds = DetectionDataset.from_spec(spec, a.split, imgsz, None, limit=a.limit)
    dets = predict_dataset(model, ds, batch=a.batch, device=a.device, conf=a.conf, iou=a.iou)
    metrics = evaluate_detections(ds, dets, per_source=True, threshold=a.operating_point)
    if a.confusion:
        plot_confusion(confusion_matrix(ds, dets), spec.names, Path(a.confusion))
    print(json.dumps({"weights": str(a.weights), "data": str(data), "imgsz": imgsz, **metrics}, indent=2))
    if not a.quiet:
        print(sources_table(metrics["sources"]), file=sys.stderr)
    return 0


def sources_table(sources: dict[str, dict]) -> str:
    """The per-source figures as a markdown table (stderr of `val`, and the model card)."""
    cols = ("fall_AP50", "fall_AP50_95", "person_AP50", "fall_precision", "fall_recall", "fall_F1", "mAP50")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| source | images | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    lines += [f"| {name} | {m['images']} | " + " | ".join(fmt(m[c]) for c in cols) + " |" for name, m in sources.items()]
    return "\n".join(lines)


def cmd_export(a: argparse.Namespace) -> int:
    from training.export import export_onnx
    path = export_onnx(a.weights, a.out, imgsz=a.imgsz, max_det=a.max_det, score_threshold=a.score_threshold,
                       iou_threshold=a.iou_threshold, metrics_json=a.metrics,
                       calibrate_data=None if a.no_calibrate else a.data, calibrate=not a.no_calibrate)
    out = {"out": str(path), "bytes": path.stat().st_size}
    if a.int8:  # the CPU's faster copy beside it (the service picks it on a CPU)
        from training.data.sources import load_data_config
        from training.quantize import calibration_images, quantize
        spec = load_data_config(a.data or DEFAULT_DATA)
        int8 = path.with_name(path.stem + ".int8" + path.suffix)
        quantize(path, int8, calibration_images([s.val for s in spec.sources if s.val is not None], 300))
        out |= {"int8": str(int8), "int8_bytes": int8.stat().st_size}
    print(json.dumps(out))
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from training.model import build_model
    from training.model.yolo import count_gflops, count_params
    from training.presets import make_config
    cfg = make_config(a.preset, scale=a.scale, nc=a.nc)
    model = build_model(cfg).eval()
    print(json.dumps({"preset": a.preset, "scale": a.scale, "nc": a.nc, "imgsz": a.imgsz,
                      "params": count_params(model), "gflops": round(count_gflops(model, a.imgsz), 3),
                      "config": cfg.__dict__}))
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from training.compare import compare, markdown_table
    try:
        summaries = compare(a.runs, a.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(summaries))
    return 0


def cmd_quantize(a: argparse.Namespace) -> int:
    from training.data.sources import load_data_config
    from training.quantize import calibration_images, quantize
    spec = load_data_config(a.data)
    images = calibration_images([s.val for s in spec.sources if s.val is not None], a.images)
    info = quantize(Path(a.model), Path(a.out), images)
    print(json.dumps({"out": a.out, "bytes": Path(a.out).stat().st_size, **info}))
    return 0


def cmd_finetune(a: argparse.Namespace) -> int:
    from training.finetune import FinetuneRefused, config_from_args, finetune
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    try:
        report = finetune(config_from_args(a))
    except FinetuneRefused as exc:
        print(f"finetune: {exc}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError) as exc:
        print(f"finetune: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: report[k] for k in ("onnx", "from", "site", "replay", "before", "after", "plan", "minutes")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a preset")
    _add_train_args(t)
    v = sub.add_parser("val", help="evaluate a checkpoint with pycocotools")
    v.add_argument("--weights", required=True)
    v.add_argument("--data", default=None, help="data config (default: the one the checkpoint trained on)")
    v.add_argument("--split", choices=["val", "train"], default="val")
    v.add_argument("--imgsz", type=int, default=0, help="default: the checkpoint's training size")
    v.add_argument("--batch", type=int, default=32)
    v.add_argument("--conf", type=float, default=0.001)
    v.add_argument("--iou", type=float, default=0.7)
    v.add_argument("--limit", type=int, default=0)
    v.add_argument("--device", default="cpu")
    v.add_argument("--confusion", default=None, help="write a confusion-matrix PNG here")
    v.add_argument("--quiet", action="store_true", help="JSON only (no per-source table on stderr)")
    v.add_argument("--operating-point", type=float, default=None,
                   help="score threshold of the fall decisions (default: max person F1 on the pooled val split, "
                        "as export chooses it)")
    e = sub.add_parser("export", help="ONNX with quality-reweighted scores and NMS in the graph")
    e.add_argument("--weights", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--imgsz", type=int, default=0, help="default: the checkpoint's training size")
    e.add_argument("--max-det", type=int, default=300)
    e.add_argument("--score-threshold", type=float, default=0.001, help="graph default; callers may feed their own")
    e.add_argument("--iou-threshold", type=float, default=0.7)
    e.add_argument("--metrics", default=None, help="JSON of measured metrics to embed in the metadata")
    e.add_argument("--data", default=None, help="data config whose (pooled) val split sets the operating point "
                                                        "(metadata `operating_point`, the service's default "
                                                        "score threshold); default: the checkpoint's own")
    e.add_argument("--int8", action="store_true", help="also write NAME.int8.onnx (static INT8, calibrated on "
                   "300 val images of --data; the service loads it on a CPU)")
    e.add_argument("--no-calibrate", action="store_true", help="no operating point (the service then uses 0.25)")
    i = sub.add_parser("info", help="params and GFLOPs of a preset")
    i.add_argument("--preset", default="baseline")
    i.add_argument("--scale", default="n", choices=["n", "s"])
    i.add_argument("--imgsz", type=int, default=640)
    i.add_argument("--nc", type=int, default=3)
    c = sub.add_parser("compare", help="val curves of several runs in one plot, and a table of their best epochs")
    c.add_argument("runs", nargs="+", help="run folders (each with results.csv)")
    c.add_argument("--out", default=None, help="write the plot here (PNG)")
    q = sub.add_parser("quantize", help="an INT8 (QDQ) copy of an exported file for CPUs, calibrated on val images")
    q.add_argument("--model", required=True, help="the exported FP32 ONNX file")
    q.add_argument("--out", required=True)
    q.add_argument("--data", default=DEFAULT_DATA, help="data config whose val images calibrate (equal shares)")
    q.add_argument("--images", type=int, default=300, help="calibration images")
    f = sub.add_parser("finetune", help="fine-tune the shipped model on a site's reviewed alerts "
                                        "(docs/site-adaptation.md)")
    f.add_argument("--site", required=True, help="the folder `python -m service review-export --out` wrote")
    f.add_argument("--from", dest="base", default="models/fall-detector.pt", help="base checkpoint (weights only)")
    f.add_argument("--out", default="runs/finetune/site", help="run folder (train/, finetune.json, the ONNX)")
    f.add_argument("--onnx", default=None, help="where the ONNX goes (default OUT/fall-detector-site.onnx)")
    f.add_argument("--epochs", type=int, default=3)
    f.add_argument("--batch", type=int, default=8)
    f.add_argument("--lr0", type=float, default=0.0002, help="twice the shipped run's final lr (measured: "
                   "docs/site-adaptation.md)")
    f.add_argument("--imgsz", type=int, default=0, help="default: the base checkpoint's")
    f.add_argument("--epoch-size", type=int, default=0, help="images an epoch (default 4 x the site's, >= 64; "
                                                              "cut to fit the budget)")
    f.add_argument("--budget-min", type=float, default=20.0, help="CPU minutes the whole run may take (estimated)")
    f.add_argument("--site-weight", type=float, default=1.0, help="the site's share against all base sources (1.0)")
    f.add_argument("--no-replay", dest="replay", action="store_false", help="train on the site frames alone")
    f.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="keep batch norm's statistics and weights (default; docs/site-adaptation.md has the "
                   "measured comparison on a real room)")
    f.add_argument("--base-val-limit", type=int, default=300, help="base val images scored before and after")
    f.add_argument("--max-regression", type=float, default=0.02, help="largest fall of the base val figure allowed")
    f.add_argument("--workers", type=int, default=0)
    f.add_argument("--threads", type=int, default=0)
    f.add_argument("--device", default="cpu")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-progress", dest="progress", action="store_false")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return {"train": cmd_train, "val": cmd_val, "export": cmd_export, "info": cmd_info,
            "compare": cmd_compare, "quantize": cmd_quantize, "finetune": cmd_finetune}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
