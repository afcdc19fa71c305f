"""Training throughput (images/s) of presets on this machine: real batches from the shared train
split through augmentation, forward, loss, backward and the optimizer step.

    .venv/bin/python benchmarks/bench_train.py --presets baseline G --imgsz 320 --batch 16 --steps 10
Prints one JSON line per preset. `--quick` is a CI smoke (tiny size, two steps).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from training.data.dataset import collate
from training.engine import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FALLDET_DATA", REPO.parent / "shared" / "data")) / "fall-action" / "data.yaml"


def bench(preset: str, imgsz: int, batch: int, steps: int, warmup: int, threads: int) -> dict:
    cfg = TrainConfig(data=str(DATA), preset=preset, imgsz=imgsz, batch=batch, nbs=batch, epochs=1,
                      limit=batch * (steps + warmup), val_limit=1, workers=1, progress=False, threads=threads,
                      out=str(REPO / "runs" / "bench"))
    tr = Trainer(cfg)
    tr.train_ds.set_epoch(0, mosaic=True)
    loader = torch.utils.data.DataLoader(tr.train_ds, batch_size=batch, shuffle=True, num_workers=1,
                                         collate_fn=collate)
    tr.model.train()
    t0, n = None, 0
    for i, b in enumerate(loader):
        if i == warmup:
            t0 = time.perf_counter()
        x = b["images"].float().div_(255).contiguous(memory_format=torch.channels_last)
        loss, _ = tr.loss_fn(tr.model(x), b["labels"], b["boxes"], b["mask"])
        loss.backward()
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        tr.ema.update(tr.model)
        if i >= warmup:
            n += len(x)
    dt = time.perf_counter() - t0
    return {"preset": preset, "imgsz": imgsz, "batch": batch, "steps": steps, "images_per_s": round(n / dt, 2),
            "s_per_step": round(dt / steps, 3), "threads": torch.get_num_threads(), "cpu": platform.processor() or
            platform.machine(), "cores": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="+", default=["baseline", "G"])
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="CI smoke: 64 px, batch 4, 2 steps")
    a = ap.parse_args()
    if a.quick:
        a.imgsz, a.batch, a.steps, a.warmup = 64, 4, 2, 1
    for p in a.presets:
        print(json.dumps(bench(p, a.imgsz, a.batch, a.steps, a.warmup, a.threads)), flush=True)


if __name__ == "__main__":
    main()
