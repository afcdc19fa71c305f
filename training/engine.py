"""Training and validation loops: SGD with warm-up and linear decay, EMA, AMP on CUDA, clipping,
checkpoints (last/best by val mAP50-95) with exact resume, per-epoch CSV and PNG curves."""
from __future__ import annotations

import copy
import csv
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.calibrate import operating_point
from training.data.dataset import AugmentConfig, DetectionDataset, collate, load_data_yaml
from training.evaluate import coco_map, confusion_matrix, plot_confusion, predict_dataset
from training.source_metrics import fitness as source_fitness
from training.source_metrics import source_metrics
from training.loss import DetectionLoss
from training.model import build_model
from training.presets import ModelConfig, make_config

log = logging.getLogger(__name__)


def freeze_batch_norm(model: nn.Module) -> None:
    """Every batch norm layer in eval mode with its weights fixed (call after `model.train()`)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


@dataclass
class TrainConfig:
    """Paper protocol by default (640, batch 32, 100 epochs, SGD lr 0.01, wd 5e-4)."""

    data: str = "../shared/data/fall-action/data.yaml"
    preset: str = "G"
    scale: str = "n"
    imgsz: int = 640
    epochs: int = 100
    batch: int = 32
    lr0: float = 0.01
    lrf: float = 0.01  # final lr = lr0 * lrf (linear decay)
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 3.0
    warmup_bias_lr: float = 0.1
    warmup_momentum: float = 0.8
    close_mosaic: int = 10
    nbs: int = 64  # nominal batch: gradients accumulate to about this many images per step
    clip: float = 10.0
    seed: int = 0
    device: str = "cpu"
    workers: int = 1
    threads: int = 0  # torch intra-op threads; 0 = torch's default (all cores)
    out: str = "runs/train"
    limit: int = 0  # use only the first N train images (tests, smoke runs)
    val_limit: int = 0
    val_split: str = ""  # default: the data.yaml's val; "train" evaluates on the (limited) train images
    box_loss: str | None = None
    inner_ratio: float | None = None
    backbone_init: str | None = None  # override the preset's pretrained backbone weights (ModelConfig)
    augment: bool = True  # False: letterbox only (memorization tests)
    camera_aug: bool = False  # True: AugmentConfig.cameras() (grey, blur, fisheye, wider scale)
    epoch_size: int = 0  # samples per epoch, drawn by source weight; 0 = the train split's size
    pretrained: bool = True  # load a pretrained backbone's weights at the start (presets that have one)
    val_interval: int = 1  # validate every N epochs (and always after the last)
    amp: bool = True
    # bfloat16 autocast on the CPU (needs AVX512-BF16 or AMX to pay): 1.55x faster forward+backward
    # of G-mnv2 at 320 on the 2-core EPYC (docs/training.md); master weights, loss and EMA stay fp32
    bf16: bool = False
    # batch norm keeps its running statistics and affine weights (fine-tunes on a few hundred pictures of
    # one room, batch 8: their statistics would replace those of every room the model learnt)
    freeze_bn: bool = False
    progress: bool = True

    def model_config(self, nc: int) -> ModelConfig:
        return make_config(self.preset, scale=self.scale, nc=nc, box_loss=self.box_loss, inner_ratio=self.inner_ratio,
                           backbone_init=self.backbone_init)


class ModelEMA:
    """Exponential moving average of weights with a warm-up ramp (decay -> 0.9999 over ~2000 updates)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        self.ema = copy.deepcopy(model).eval()
        self.decay, self.tau, self.updates = decay, tau, updates
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)


def atomic_save(obj: dict, path: Path) -> None:
    """Write then rename, so a run killed mid-write never leaves a truncated checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, cfg: TrainConfig, accumulate: int) -> torch.optim.SGD:
    """Three groups: conv/linear weights (decayed), norm weights and biases (not decayed)."""
    decay, no_decay, bias = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias":
                bias.append(p)
            elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                no_decay.append(p)
            else:
                decay.append(p)
    wd = cfg.weight_decay * cfg.batch * accumulate / cfg.nbs
    opt = torch.optim.SGD(no_decay, lr=cfg.lr0, momentum=cfg.momentum, nesterov=True)
    opt.add_param_group({"params": decay, "weight_decay": wd})
    opt.add_param_group({"params": bias, "weight_decay": 0.0})
    for g in opt.param_groups:
        g["initial_lr"] = cfg.lr0
    return opt


def lr_factor(epoch: float, cfg: TrainConfig) -> float:
    return (1 - epoch / cfg.epochs) * (1.0 - cfg.lrf) + cfg.lrf


SOURCE_COLUMNS = ("fall_AP50", "fall_AP50_95", "person_AP50", "person_AP50_95", "fall_F1")


def csv_fields(names: list[str], sources: list[str] = ()) -> list[str]:
    per_source = [f"{s}/{k}" for s in sources for k in SOURCE_COLUMNS]
    return ["epoch", "box", "cls", "dfl", "quality", "mAP50", "mAP50_95", *(f"AP50_95_{n}" for n in names),
            *(["fitness", *per_source] if sources else []), "lr", "epoch_s", "train_img_s"]


def warmup_accumulate(it: int, warmup_iters: int, nominal: int) -> int:
    """Gradient accumulation during warm-up: from 1 batch per step up to the nominal count."""
    if it >= warmup_iters:
        return nominal
    return max(1, round(1 + (nominal - 1) * it / warmup_iters))


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: Path | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        spec = load_data_yaml(cfg.data)
        self.spec = spec
        self.names = spec.names
        self.multi_source = len(spec.sources) > 1
        self.device = torch.device(cfg.device)
        self.mcfg = cfg.model_config(len(spec.names))
        aug = (AugmentConfig.cameras() if cfg.camera_aug else AugmentConfig()) if cfg.augment else None
        self.train_ds = DetectionDataset.from_spec(spec, "train", cfg.imgsz, aug, cfg.seed, cfg.workers, cfg.limit)
        if cfg.val_split == "train":
            self.val_ds = DetectionDataset.from_spec(spec, "train", cfg.imgsz, None, cfg.seed, cfg.workers, cfg.limit)
        else:
            self.val_ds = DetectionDataset.from_spec(spec, "val", cfg.imgsz, None, cfg.seed, cfg.workers,
                                                     cfg.val_limit)
        # channels_last: 3-4x faster convolutions on CPU (oneDNN), also the fast path on CUDA
        self.model = build_model(self.mcfg, pretrained=cfg.pretrained and resume is None).to(
            self.device, memory_format=torch.channels_last)
        self.loss_fn = DetectionLoss(self.mcfg, allowed=torch.from_numpy(spec.space.allowed_matrix()))
        self.accumulate = max(round(cfg.nbs / cfg.batch), 1)
        self.optimizer = build_optimizer(self.model, cfg, self.accumulate)
        self.ema = ModelEMA(self.model)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.autocast = {"device_type": self.device.type, "enabled": self.use_amp or (cfg.bf16 and self.device.type == "cpu")}
        if cfg.bf16 and self.device.type == "cpu":
            self.autocast["dtype"] = torch.bfloat16
        self.start_epoch, self.best_fitness, self.history = 0, -1.0, []
        self.last_step = -1  # iteration of the last optimizer step
        if resume is not None:
            self._load(resume)

    # ---- checkpoints -------------------------------------------------------------------------
    def _state(self, epoch: int, metrics: dict) -> dict:
        return {"epoch": epoch, "model": self.model.state_dict(), "ema": self.ema.ema.state_dict(),
                "ema_updates": self.ema.updates, "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "best_fitness": self.best_fitness,
                "model_config": asdict(self.mcfg), "train_config": asdict(self.cfg), "names": self.names,
                "accumulate": self.accumulate, "last_step": self.last_step,
                "metrics": metrics, "history": self.history,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}

    def _load(self, path: Path) -> None:
        ck = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(ck["model"])
        self.ema.ema.load_state_dict(ck["ema"])
        self.ema.updates = ck["ema_updates"]
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        self.best_fitness, self.history = ck["best_fitness"], ck["history"]
        self.start_epoch = ck["epoch"] + 1
        self.last_step = ck.get("last_step", -1)
        torch.set_rng_state(ck["rng"]["torch"])
        np.random.set_state(ck["rng"]["numpy"])
        random.setstate(ck["rng"]["python"])
        log.info("resumed from %s at epoch %d", path, self.start_epoch)

    # ---- loops -------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg = self.cfg
        n_samples = cfg.epoch_size or len(self.train_ds)
        nb = math.ceil(n_samples / cfg.batch)
        warmup_iters = max(round(cfg.warmup_epochs * nb), 100) if cfg.warmup_epochs > 0 else 0
        metrics: dict = self.history[-1] if self.history else {}
        for epoch in range(self.start_epoch, cfg.epochs):
            self.train_ds.set_epoch(epoch, mosaic=epoch < cfg.epochs - cfg.close_mosaic)
            g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            # one source: a plain shuffle; several: draws by source weight, so no source dominates
            sampler = (torch.utils.data.WeightedRandomSampler(self.train_ds.sample_weights.tolist(), n_samples,
                                                              replacement=True, generator=g)
                       if self.multi_source or cfg.epoch_size else None)
            loader = torch.utils.data.DataLoader(self.train_ds, batch_size=cfg.batch, shuffle=sampler is None,
                                                 sampler=sampler, generator=None if sampler else g,
                                                 num_workers=cfg.workers, collate_fn=collate, drop_last=False,
                                                 persistent_workers=False, pin_memory=self.device.type == "cuda")
            self.model.train()
            if cfg.freeze_bn:
                freeze_batch_norm(self.model)
            sums: dict[str, float] = {}
            t0 = time.perf_counter()
            bar = tqdm(loader, total=nb, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress)
            self.optimizer.zero_grad(set_to_none=True)
            for i, batch in enumerate(bar):
                it = i + nb * epoch
                self._warmup(it, warmup_iters, epoch)
                accumulate = warmup_accumulate(it, warmup_iters, self.accumulate)
                imgs = batch["images"].to(self.device, non_blocking=True).float().div_(255.0)
                imgs = imgs.contiguous(memory_format=torch.channels_last)
                with torch.autocast(**self.autocast):
                    out = self.model(imgs)
                loss, terms = self.loss_fn(out, batch["labels"].to(self.device), batch["boxes"].to(self.device),
                                           batch["mask"].to(self.device), batch["class_mask"].to(self.device))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at epoch {epoch} batch {i}: {terms}")
                self.scaler.scale(loss).backward()
                # as the reference trainer: step once `accumulate` batches gathered since the last step;
                # no forced step at an epoch's end (its leftover gradients are cleared at the next start)
                if it - self.last_step >= accumulate:
                    self.last_step = it
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.ema.update(self.model)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix({k: f"{v / (i + 1):.3f}" for k, v in sums.items()})
            train_s = time.perf_counter() - t0
            for gr in self.optimizer.param_groups:
                gr["lr"] = gr["initial_lr"] * lr_factor(epoch + 1, cfg)
            row = {"epoch": epoch + 1, **{k: round(v / nb, 5) for k, v in sums.items()},
                   "lr": round(self.optimizer.param_groups[0]["lr"], 6), "train_img_s": round(n_samples / train_s, 2)}
            improved = False
            if (epoch + 1) % cfg.val_interval == 0 or epoch + 1 == cfg.epochs:
                metrics = self.validate(progress=cfg.progress)
                fitness = metrics.get("fitness", metrics["mAP50_95"])
                row.update({"mAP50": metrics["mAP50"], "mAP50_95": metrics["mAP50_95"],
                            **{f"AP50_95_{n}": metrics["per_class"][n]["AP50_95"] for n in self.names}})
                if self.multi_source:
                    row["fitness"] = fitness
                    row.update({f"{s}/{k}": m[k] for s, m in metrics["sources"].items() for k in SOURCE_COLUMNS})
                improved = fitness > self.best_fitness
                self.best_fitness = max(fitness, self.best_fitness)
            row["epoch_s"] = round(time.perf_counter() - t0, 1)
            self.history.append(row)
            state = self._state(epoch, metrics)
            if improved:
                atomic_save(state, self.out / "best.pt")
            atomic_save(state, self.out / "last.pt")  # last: a kill at any moment leaves a loadable pair
            self._write_csv()
            log.info("epoch %d: %s", epoch + 1, json.dumps(row))
        self._finish()
        return metrics

    def _warmup(self, it: int, warmup_iters: int, epoch: int) -> None:
        if it >= warmup_iters:
            return
        frac = it / warmup_iters
        for j, gr in enumerate(self.optimizer.param_groups):
            start = self.cfg.warmup_bias_lr if j == 2 else 0.0
            gr["lr"] = start + frac * (gr["initial_lr"] * lr_factor(epoch, self.cfg) - start)
            gr["momentum"] = self.cfg.warmup_momentum + frac * (self.cfg.momentum - self.cfg.warmup_momentum)

    def validate(self, progress: bool = True) -> dict:
        dets = predict_dataset(self.ema.ema, self.val_ds, batch=32, device=str(self.device), progress=progress)
        return evaluate_detections(self.val_ds, dets, per_source=self.multi_source)

    def _write_csv(self) -> None:
        sources = [s.name for s in self.spec.sources] if self.multi_source else []
        with open(self.out / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=csv_fields(self.names, sources), extrasaction="ignore")
            w.writeheader()
            w.writerows(self.history)

    def _finish(self) -> None:
        """Curves, confusion matrix and the final metrics of the best checkpoint."""
        plot_curves(self.history, self.out / "results.png")
        best = self.out / "best.pt"
        if best.exists():
            ck = torch.load(best, map_location=self.device, weights_only=False)
            self.ema.ema.load_state_dict(ck["ema"])
        dets = predict_dataset(self.ema.ema, self.val_ds, batch=32, device=str(self.device), progress=False)
        final = evaluate_detections(self.val_ds, dets, per_source=self.multi_source)
        plot_confusion(confusion_matrix(self.val_ds, dets), self.names, self.out / "confusion_matrix.png")
        (self.out / "metrics.json").write_text(json.dumps({"best": final, "history": self.history}, indent=2))


def evaluate_detections(ds: DetectionDataset, dets: list[np.ndarray], per_source: bool,
                        threshold: float | None = None) -> dict:
    """Pooled COCO mAP; with `per_source` also each source's figures at the operating point (`threshold`,
    or chosen on the pooled split), and the fitness that picks best.pt (source_metrics.fitness)."""
    metrics = coco_map(ds, dets)
    if per_source:
        if threshold is None:
            threshold = operating_point(ds, dets)["score_threshold"]
        threshold = threshold if threshold is not None else 0.25
        metrics["operating_point"] = threshold
        metrics["sources"] = source_metrics(ds, dets, threshold)
        metrics["fitness"] = source_fitness(metrics["sources"])
    return metrics


def plot_curves(history: list[dict], path: Path) -> None:
    if not history:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [r["epoch"] for r in history]
    keys = [k for k in ("box", "cls", "dfl", "quality") if k in history[0]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for k in keys:
        axes[0].plot(ep, [r[k] for r in history], label=k)
    axes[0].set_title("train loss terms")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    for k in ("mAP50", "mAP50_95"):
        pts = [(r["epoch"], r[k]) for r in history if k in r]
        axes[1].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k)
    axes[1].set_title("val")
    axes[1].set_xlabel("epoch")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_checkpoint_model(path: str | Path, device: str = "cpu", use_ema: bool = True):
    """Rebuild the network of a checkpoint; returns (model, checkpoint dict)."""
    ck = torch.load(path, map_location=device, weights_only=False)
    model = build_model(ModelConfig(**ck["model_config"]))
    model.load_state_dict(ck["ema" if use_ema else "model"])
    return model.to(device).eval(), ck
