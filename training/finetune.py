"""`python -m training finetune --site DIR [--from models/fall-detector.pt]`: teach the shipped model
one site's rooms from its reviewed alerts (`python -m service review-export`), on the CPU.

Why these steps (docs/site-adaptation.md):
- Replay: the site's frames are mixed with the base sources (training/configs/all-sources.yaml)
  found under $FALLDET_DATA, so the model does not forget other rooms; without them it trains on
  the site alone and says so.
- Budget: one timed batch estimates the seconds per image; the images per epoch are cut so the
  whole run fits `--budget-min` (default 20 minutes on the 2-core CPU), and the plan is printed.
- Before/after: the site's held-out incidents (the export's `val`, whole incidents) and the base
  sources' val are scored with the base model and the tuned one, each at its own operating point
  (best person F1 on the base val, as the export picks it). Site figures: frame accuracy of the
  fall decision (a frame is "fall" when any fall box is at or above the threshold), frames wrongly
  called a fall, frames of a fall missed; base figure: the mean over sources of (fall AP50 +
  person AP50) / 2.
- The gate: no export when the site's frame accuracy got worse, or the base figure fell by more than
  `--max-regression` (default 0.02). Otherwise the ONNX is exported (operating point calibrated as
  usual) with metadata `finetune`: the base file and its sha256, the site folder's summary, the
  replayed sources, the budget and the before/after figures.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

log = logging.getLogger(__name__)

DEFAULT_BASE = "models/fall-detector.pt"
BASE_CONFIG = Path(__file__).parent / "configs" / "all-sources.yaml"


class FinetuneRefused(RuntimeError):
    """The tuned model is not better where it must be; nothing was exported (the message says why)."""


@dataclass
class FinetuneConfig:
    site: str
    base: str = DEFAULT_BASE
    out: str = "runs/finetune/site"
    onnx: str = ""  # default OUT/fall-detector-site.onnx
    epochs: int = 3
    batch: int = 8
    # twice the shipped run's final lr (1e-4): 0.002 kicked the model out of its basin in 44 steps (the
    # real room of docs/site-adaptation.md: base val -0.074, refused; 2e-4 with frozen batch norm: -0.008)
    lr0: float = 0.0002
    imgsz: int = 0  # default: the base checkpoint's
    site_weight: float = 1.0  # the site's share of each epoch against all base sources together (1.0 each)
    replay: bool = True
    freeze_bn: bool = True  # batch norm keeps the base model's statistics (TrainConfig.freeze_bn)
    budget_min: float = 20.0
    epoch_size: int = 0  # 0: 4 x the site's train frames (at least 64), then cut to the budget
    base_val_limit: int = 300  # base val images scored before and after (the budget includes them)
    max_regression: float = 0.02
    workers: int = 0
    threads: int = 0
    device: str = "cpu"
    seed: int = 0
    progress: bool = True


def sha256(path: Path) -> str:
    """Hex sha256 of a file (read in blocks, never whole into memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_base(path: Path) -> dict:
    """A weights-only checkpoint: "model" (or "ema") state_dict, "model_config", "names" (+ "imgsz")."""
    if not path.is_file():
        raise FileNotFoundError(f"base checkpoint not found: {path} (the shipped one is models/fall-detector.pt; "
                                "or pass --from RUN/best.pt)")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    missing = [k for k in ("model_config", "names") if k not in ck] + ([] if "ema" in ck or "model" in ck else ["model"])
    if missing:
        raise ValueError(f"{path} is not a model checkpoint: it lacks {missing}")
    return ck


def site_spec(site: Path) -> dict:
    """The site folder's data.yaml, checked: names, class map, a train split with images."""
    yaml_path = site / "data.yaml"
    if not yaml_path.is_file():
        raise FileNotFoundError(f"{yaml_path} not found: make the folder with `python -m service review-export --out {site}`")
    doc = yaml.safe_load(yaml_path.read_text())
    if not isinstance(doc, dict) or "names" not in doc or "classes" not in doc:
        raise ValueError(f"{yaml_path} lacks names or classes (is it a review-export folder?)")
    train = site / doc.get("train", "images/train")
    if not train.is_dir() or not any(train.iterdir()):
        raise ValueError(f"{site}: no training frames in {train} (review more alerts, then export again)")
    return doc


def write_data_config(cfg: FinetuneConfig, names: list[str], site_doc: dict, out: Path) -> tuple[Path, list[str]]:
    """OUT/data.yaml: the site as a source, plus the base sources present (replay). Returns (path, replayed)."""
    from training.data.sources import data_root

    site = Path(cfg.site).resolve()
    sources = {"site": {"path": str(site), "weight": cfg.site_weight, "classes": site_doc["classes"]}}
    replayed: list[str] = []
    base = yaml.safe_load(BASE_CONFIG.read_text())
    if cfg.replay and [str(n) for n in base["names"]] == list(names):
        for name, sdoc in base["sources"].items():
            if (data_root() / sdoc.get("path", name) / "data.yaml").is_file():
                sources[name] = {**sdoc, "path": str((data_root() / sdoc.get("path", name)).resolve())}
                replayed.append(name)
        total = sum(float(sources[n].get("weight", 1.0)) for n in replayed)
        for n in replayed:  # all base sources together weigh 1.0 against the site's site_weight
            sources[n]["weight"] = float(sources[n].get("weight", 1.0)) / total
    elif cfg.replay:
        log.warning("no replay: the base model's classes %s differ from %s's", names, BASE_CONFIG.name)
    path = out / "data.yaml"
    path.write_text(yaml.safe_dump({"names": list(names), "sources": sources}, sort_keys=False))
    return path, replayed


def frame_figures(ds, dets: list[np.ndarray], threshold: float) -> dict:
    """Frame accuracy of the fall decision on `ds` (a frame is fall when any fall box >= threshold)."""
    fall = ds.names.index("fall")
    allowed = ds.space.allowed_matrix()
    right = false_falls = missed = falls = 0
    for s, d in zip(ds.samples, dets):
        truth = any(allowed[int(t), fall] and allowed[int(t)].sum() == 1 for t in s.labels)  # an exact fall box
        said = bool(len(d) and np.any((d[:, 5] == fall) & (d[:, 4] >= threshold)))
        falls += truth
        right += truth == said
        false_falls += said and not truth
        missed += truth and not said
    n = len(ds.samples)
    return {"frames": n, "fall_frames": falls, "frame_accuracy": round(right / n, 4) if n else None,
            "false_fall_frames": false_falls, "missed_fall_frames": missed, "threshold": round(float(threshold), 4)}


def base_figure(per_source: dict) -> float | None:
    vals = [((m["fall_AP50"] or 0.0) + (m["person_AP50"] or 0.0)) / 2 if m.get("boxes_everyone", True)
            else (m["fall_AP50"] or 0.0) for m in per_source.values()]
    return round(float(np.mean(vals)), 4) if vals else None


def score(model, site_val, base_val, imgsz: int) -> dict:
    """Before/after figures of one model (see the module docstring)."""
    from training.calibrate import operating_point
    from training.evaluate import predict_dataset
    from training.source_metrics import source_metrics

    out: dict = {}
    base_dets = predict_dataset(model, base_val, progress=False) if base_val is not None and len(base_val) else None
    site_dets = predict_dataset(model, site_val, progress=False) if len(site_val) else []
    calib = (base_val, base_dets) if base_dets is not None else (site_val, site_dets)
    op = operating_point(*calib)["score_threshold"] if len(calib[0]) else None
    op = op if op is not None else 0.25
    out["operating_point"] = round(float(op), 4)
    out["site"] = frame_figures(site_val, site_dets, op)
    if base_dets is not None:
        per_source = source_metrics(base_val, base_dets, op)
        out["base"] = {"score": base_figure(per_source), "sources": {k: {m: v[m] for m in ("images", "fall_AP50",
                       "person_AP50", "fall_F1")} for k, v in per_source.items()}}
    return out


def _estimate_s_per_image(trainer, batch: int) -> float:
    """Seconds per training image: one timed forward + backward on a real batch (after a warm one)."""
    from training.data.dataset import collate

    ds = trainer.train_ds
    n = min(batch, len(ds))
    ds.set_epoch(0, mosaic=False)
    items = collate([ds[i] for i in range(n)])
    imgs = items["images"].float().div_(255.0).contiguous(memory_format=torch.channels_last)
    trainer.model.train()
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        out = trainer.model(imgs)
        loss, _ = trainer.loss_fn(out, items["labels"], items["boxes"], items["mask"], items["class_mask"])
        loss.backward()
        trainer.model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times[-1] / n * 1.3  # data loading and augmentation on top


def finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune, compare, and export when better; returns the report (also OUT/finetune.json)."""
    from training.data.dataset import DetectionDataset, load_data_yaml
    from training.engine import ModelEMA, TrainConfig, Trainer, build_optimizer
    from training.export import export_onnx
    from training.loss import DetectionLoss
    from training.model import build_model
    from training.presets import ModelConfig

    started = time.time()
    site = Path(cfg.site)
    base_path = Path(cfg.base)
    ck = load_base(base_path)
    site_doc = site_spec(site)
    names = list(ck["names"])
    if "fall" not in names:
        raise ValueError(f"{base_path}: the model's classes {names} lack 'fall'")
    mcfg = ModelConfig(**ck["model_config"])
    imgsz = cfg.imgsz or int(ck.get("imgsz") or ck.get("train_config", {}).get("imgsz") or 320)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data_path, replayed = write_data_config(cfg, names, site_doc, out)
    site_train = sum(1 for _ in (site / site_doc.get("train", "images/train")).iterdir())
    val_dir = site / site_doc.get("val", "images/val")
    if not val_dir.is_dir() or not any(val_dir.iterdir()):
        raise ValueError(f"{site}: no held-out incident in {val_dir}: review at least two incidents (or mark a "
                         "'nobody fell here' view) and export again; the before/after needs one held out")
    epoch_size = cfg.epoch_size or max(64, 4 * site_train)
    tc = TrainConfig(data=str(data_path), imgsz=imgsz, epochs=cfg.epochs, batch=cfg.batch, lr0=cfg.lr0,
                     warmup_epochs=0.0, close_mosaic=cfg.epochs, nbs=cfg.batch, seed=cfg.seed, device=cfg.device,
                     workers=cfg.workers, threads=cfg.threads, out=str(out / "train"), epoch_size=epoch_size,
                     val_interval=max(cfg.epochs, 1), pretrained=False, progress=cfg.progress, val_limit=1,
                     freeze_bn=cfg.freeze_bn)
    trainer = Trainer(tc)
    state = ck.get("ema") or ck["model"]
    trainer.mcfg = mcfg  # the base's network, whatever preset the config names
    trainer.model = build_model(mcfg).to(trainer.device, memory_format=torch.channels_last)
    trainer.model.load_state_dict(state)
    trainer.loss_fn = DetectionLoss(mcfg, allowed=torch.from_numpy(trainer.spec.space.allowed_matrix()))
    trainer.optimizer = build_optimizer(trainer.model, tc, trainer.accumulate)
    trainer.ema = ModelEMA(trainer.model)
    base_model = build_model(mcfg)
    base_model.load_state_dict(state)
    base_model.eval()

    spec = load_data_yaml(data_path)
    site_val = DetectionDataset.from_spec(spec, "val", imgsz, None, cfg.seed, cfg.workers, sources=["site"])
    base_val = (DetectionDataset.from_spec(spec, "val", imgsz, None, cfg.seed, cfg.workers, cfg.base_val_limit,
                                           sources=replayed) if replayed else None)
    if not len(site_val):
        log.warning("the site folder holds out no incident (val is empty): the before/after has nothing to score")

    s_per_img = _estimate_s_per_image(trainer, cfg.batch)
    # scored before and after, and once more to calibrate the exported file's operating point
    eval_imgs = 3 * (len(site_val) + (len(base_val) if base_val is not None else 0))
    budget_s = cfg.budget_min * 60
    fits = max(cfg.batch, int((budget_s * 0.85 - eval_imgs * s_per_img / 3) / s_per_img / max(cfg.epochs, 1)))
    if fits < epoch_size:
        log.warning("budget %.0f min: %d images an epoch instead of %d", cfg.budget_min, fits, epoch_size)
        epoch_size = fits
    trainer.cfg.epoch_size = epoch_size
    plan = {"epochs": cfg.epochs, "epoch_size": epoch_size, "batch": cfg.batch, "imgsz": imgsz,
            "s_per_image": round(s_per_img, 4), "budget_min": cfg.budget_min, "freeze_bn": cfg.freeze_bn,
            "estimated_min": round((epoch_size * cfg.epochs + eval_imgs / 3) * s_per_img / 60, 1)}
    log.info("fine-tune plan: %s; replay: %s", plan, replayed or "none")

    before = score(base_model, site_val, base_val, imgsz)
    trainer.train()
    best = out / "train" / "best.pt"
    weights = best if best.exists() else out / "train" / "last.pt"
    tuned, _ = _load_tuned(weights)
    after = score(tuned, site_val, base_val, imgsz)

    report = {"from": {"file": base_path.name, "sha256": sha256(base_path)},
              "site": _site_summary(site, site_doc), "replay": replayed, "plan": plan,
              "before": before, "after": after, "max_regression": cfg.max_regression,
              "minutes": round((time.time() - started) / 60, 1), "checkpoint": str(weights)}
    problems = verdict(before, after, cfg.max_regression)
    report["refused"] = problems or None
    (out / "finetune.json").write_text(json.dumps(report, indent=2))
    if problems:
        raise FinetuneRefused("not exported: " + "; ".join(problems) + f" (figures in {out / 'finetune.json'})")
    onnx_path = Path(cfg.onnx) if cfg.onnx else out / "fall-detector-site.onnx"
    export_onnx(weights, onnx_path, imgsz=imgsz, calibrate=True, calibrate_data=str(data_path),
                calibrate_limit=cfg.base_val_limit)
    report["minutes"] = round((time.time() - started) / 60, 1)  # the export's calibration counts too
    _stamp(onnx_path, report)
    report["onnx"] = {"file": str(onnx_path), "sha256": sha256(onnx_path), "bytes": onnx_path.stat().st_size}
    (out / "finetune.json").write_text(json.dumps(report, indent=2))
    return report


def verdict(before: dict, after: dict, max_regression: float) -> list[str]:
    """Why the tuned model must not be exported (empty: it may)."""
    problems = []
    b, a = before["site"]["frame_accuracy"], after["site"]["frame_accuracy"]
    if b is not None and a is not None and a < b:
        problems.append(f"the site's held-out frame accuracy got worse ({b:.3f} -> {a:.3f})")
    bb, ab = (before.get("base") or {}).get("score"), (after.get("base") or {}).get("score")
    if bb is not None and ab is not None and bb - ab > max_regression:
        problems.append(f"the base sources' val fell by {bb - ab:.3f} ({bb:.3f} -> {ab:.3f}), more than the "
                        f"allowed {max_regression}")
    return problems


def _load_tuned(weights: Path):
    from training.engine import load_checkpoint_model

    return load_checkpoint_model(weights, "cpu")


def _site_summary(site: Path, doc: dict) -> dict:
    summary = {"folder": site.resolve().name, "names": doc.get("names"), "classes": doc.get("classes")}
    export = site / "export.json"
    if export.is_file():
        e = json.loads(export.read_text())
        summary.update(frames=e.get("frames"), incidents=e.get("incidents"), boxes=e.get("boxes"))
    return summary


def _stamp(path: Path, report: dict) -> None:
    """Add the `finetune` metadata (provenance and before/after) to the exported file."""
    import onnx

    m = onnx.load(str(path))
    keep = {k: report[k] for k in ("from", "site", "replay", "plan", "before", "after", "max_regression", "minutes")}
    entry = m.metadata_props.add()
    entry.key, entry.value = "finetune", json.dumps(keep)
    entry = m.metadata_props.add()
    entry.key, entry.value = "finetuned_from", report["from"]["sha256"]
    onnx.save(m, str(path))


def config_from_args(a) -> FinetuneConfig:
    known = {f for f in FinetuneConfig.__dataclass_fields__}
    values = {k: v for k, v in vars(a).items() if k in known and v is not None}
    return FinetuneConfig(**values)


