"""YOLO-format datasets: scan (reporting bad files and lines), cache in RAM, augment, batch.

A sample's boxes are pixel xyxy of the cached image, whose long side is the training size.
"""
from __future__ import annotations

import logging
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from training.boxes import xywhn_to_xyxy
from training.data import augment as A
from training.data.sources import DROP, DataSpec, LabelSpace, Source, load_data_config

log = logging.getLogger(__name__)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_data_yaml(path: str | Path) -> DataSpec:
    """A data.yaml, or a multi-source data config (see training/data/sources.py)."""
    return load_data_config(path)


@dataclass
class Sample:
    image: Path
    labels: np.ndarray  # [n] int64 target ids (= class ids for exact labels; see sources.LabelSpace)
    boxes_xywhn: np.ndarray  # [n,4] float32 normalized centre/size
    source: str = ""
    source_labels: np.ndarray | None = None  # [n] the source's own label ids (per-source evaluation)


@dataclass(frozen=True)
class SplitPart:
    """One source's images of a split."""

    source: Source
    images_dir: Path


@dataclass
class ScanReport:
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "file[:line]: reason"


def label_path(image: Path) -> Path:
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def parse_label_file(path: Path, nc: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read `class cx cy w h` lines; malformed lines are reported (file:line) and skipped."""
    labels, boxes, problems = [], [], []
    if not path.exists():
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float32), problems  # no label file: no person
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        v = line.split()
        try:
            if len(v) != 5:
                raise ValueError(f"expected 5 fields, got {len(v)}")
            c, xywh = int(v[0]), [float(x) for x in v[1:]]
            if not 0 <= c < nc:
                raise ValueError(f"class {c} outside 0..{nc - 1}")
            if not all(np.isfinite(xywh)) or xywh[2] <= 0 or xywh[3] <= 0:
                raise ValueError("non-positive or non-finite size")
            if not all(-0.01 <= x <= 1.01 for x in xywh):
                raise ValueError("coordinates outside [0, 1]")
        except ValueError as e:
            problems.append(f"{path}:{n}: {e}")
            continue
        labels.append(c)
        boxes.append(np.clip(xywh, 0, 1))
    return (np.array(labels, np.int64), np.array(boxes, np.float32).reshape(-1, 4), problems)


def scan_split(images_dir: Path, nc: int, source: Source | None = None) -> ScanReport:
    """List images and their labels; bad label lines are reported and skipped (images checked at load).

    With a `source`, label ids are the source's own (nc = its label count) and become targets
    through its map; boxes of labels mapped nowhere are left out.
    """
    report = ScanReport()
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    to_target = np.asarray(source.to_target if source else range(nc), np.int64)
    for img in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        src_labels, boxes, problems = parse_label_file(label_path(img), nc)
        report.problems += problems
        targets = to_target[src_labels]
        keep = targets != DROP
        report.samples.append(Sample(img, targets[keep], boxes[keep], source.name if source else "",
                                     src_labels[keep]))
    return report


def _load_resized(path: Path, size: int) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nh, nw = round(h * r), round(w * r)
    return img if (nh, nw) == (h, w) else cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class AugmentConfig:
    mosaic: float = 1.0  # probability
    scale: float = 0.5
    translate: float = 0.1
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    fliplr: float = 0.5
    # For cameras the data shows little of (chosen from val measurements, docs/data.md): all 0
    # keeps the paper's recipe for the ablation presets.
    greyscale: float = 0.0  # probability of an infrared-like grey image
    blur: float = 0.0  # probability of a Gaussian or motion blur
    fisheye: float = 0.0  # probability of a barrel distortion (ceiling fisheye cameras)

    @classmethod
    def cameras(cls) -> "AugmentConfig":
        """The recipe for the multi-source product model: more scale range for small far-away people,
        grey, blur and fisheye."""
        return cls(scale=0.6, greyscale=0.1, blur=0.1, fisheye=0.1)


class DetectionDataset(Dataset):
    """Images cached in RAM at training size; augmentation is deterministic per (seed, epoch, index)."""

    def __init__(self, images_dir: Path | list[SplitPart], names: list[str], imgsz: int,
                 augment: AugmentConfig | None, seed: int = 0, workers: int = 2, limit: int = 0,
                 only: Collection[Path] | None = None, space: LabelSpace | None = None) -> None:
        """`images_dir`: one folder whose labels are `names`, or several sources' parts (`from_spec`).

        `limit`: the first N images of each part; `only`: keep just these image files (one part of a
        split, e.g. one data source)."""
        self.imgsz, self.aug, self.seed, self.names = imgsz, augment, seed, list(names)
        self.space = space or LabelSpace.exact(names)
        self.epoch = 0
        self.mosaic_on = augment is not None and augment.mosaic > 0
        if isinstance(images_dir, (str, Path)):
            folder = Path(images_dir)
            src = Source(folder.parent.name, folder.parent, folder, folder, tuple(names), tuple(range(len(names))))
            parts = [SplitPart(src, folder)]
        else:
            parts = list(images_dir)
        keep = None if only is None else set(only)
        samples: list[Sample] = []
        self.problems = []
        self.sources = {p.source.name: p.source for p in parts}
        for part in parts:
            report = scan_split(part.images_dir, len(part.source.label_names), part.source)
            got = report.samples if keep is None else [s for s in report.samples if s.image in keep]
            samples += got[:limit] if limit else got
            self.problems += report.problems
        with ThreadPoolExecutor(max(workers, 1)) as pool:
            images = list(pool.map(lambda s: _load_resized(s.image, imgsz), samples))
        self.samples, self.images, self.shapes = [], [], []
        for s, img in zip(samples, images):
            if img is None:
                self.problems.append(f"{s.image}: unreadable or corrupt image, skipped")
                continue
            self.samples.append(s)
            self.images.append(img)
        for p in self.problems:
            log.warning("dataset: %s", p)
        self.sample_weights = self._source_balanced_weights()
        everyone = np.array([self.sources[smp.source].boxes_everyone if smp.source in self.sources else True
                             for smp in self.samples], bool)
        p = self.sample_weights * everyone
        self._partner_p = p / p.sum() if p.sum() > 0 else self.sample_weights
        self._by_source = {name: np.array(self.source_indices(name)) for name in self.sources}

    @classmethod
    def from_spec(cls, spec: DataSpec, split: str, imgsz: int, augment: AugmentConfig | None, seed: int = 0,
                  workers: int = 2, limit: int = 0, sources: Collection[str] | None = None) -> "DetectionDataset":
        """A split of every source of a data config (or of the named `sources`)."""
        chosen = [s for s in spec.sources if sources is None or s.name in sources]
        if sources is not None and len(chosen) != len(set(sources)):
            raise ValueError(f"unknown sources {sorted(set(sources) - {s.name for s in spec.sources})}")
        parts = [SplitPart(s, s.split_dir(split)) for s in chosen if s.split_dir(split) is not None]
        return cls(parts, spec.names, imgsz, augment, seed, workers, limit, space=spec.space)

    def _source_balanced_weights(self) -> np.ndarray:
        """Per-sample probability so each source gets its weight's share, whatever its size; inside a
        source an image's chance is multiplied by its labels' `boost` (the largest one it holds)."""
        inner = np.array([self._boost(s) for s in self.samples], np.float64)
        totals: dict[str, float] = {}
        for s, b in zip(self.samples, inner):
            totals[s.source] = totals.get(s.source, 0.0) + b
        w = np.array([self.sources[s.source].weight * b / totals[s.source] for s, b in zip(self.samples, inner)],
                     np.float64)
        return w / w.sum() if len(w) else w

    def _boost(self, s: Sample) -> float:
        table = dict(self.sources[s.source].boost) if s.source in self.sources else {}
        if not table or s.source_labels is None or not len(s.source_labels):
            return 1.0
        return max(1.0, *(table.get(int(label), 1.0) for label in s.source_labels))

    def class_mask(self, i: int) -> np.ndarray:
        """[nc] bool: the class logits sample i's source trains (Source.trains)."""
        src = self.sources.get(self.samples[i].source)
        mask = np.ones(self.space.nc, bool)
        if src is not None and src.trains is not None:
            mask[:] = False
            mask[list(src.trains)] = True
        return mask

    def _mosaic_partners(self, i: int, rng: np.random.Generator) -> list[int]:
        """Three partners drawn as samples are. A source that boxes only some people keeps its
        mosaics to itself, so its class mask holds over the whole image."""
        src = self.sources.get(self.samples[i].source)
        if src is None or src.boxes_everyone:
            return list(rng.choice(len(self), 3, p=self._partner_p))
        own = self._by_source[src.name]
        return list(own[rng.choice(len(own), 3)])

    def source_indices(self, name: str) -> list[int]:
        return [i for i, s in enumerate(self.samples) if s.source == name]

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int, mosaic: bool) -> None:
        self.epoch, self.mosaic_on = epoch, mosaic and self.aug is not None and self.aug.mosaic > 0

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cached image and its pixel xyxy boxes and labels."""
        img = self.images[i]
        s = self.samples[i]
        boxes = xywhn_to_xyxy(s.boxes_xywhn, img.shape[1], img.shape[0]).astype(np.float32)
        return img, boxes, s.labels

    def __getitem__(self, i: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, self.epoch, i))
        if self.aug is None:
            img, boxes, labels = self.raw(i)
            img, r, (left, top) = A.letterbox(img, self.imgsz)
            boxes = boxes * r + np.array([left, top, left, top], np.float32)
        else:
            if self.mosaic_on and rng.random() < self.aug.mosaic:
                idx = [i, *self._mosaic_partners(i, rng)]
                img, boxes, labels = A.mosaic_then_affine([self.raw(j) for j in idx], self.imgsz, rng,
                                                          self.aug.scale, self.aug.translate)
            else:
                img, boxes, labels = self.raw(i)
                img, boxes, labels = A.random_affine(img, boxes, labels, rng, self.imgsz, self.aug.scale,
                                                     self.aug.translate)
            if self.aug.fisheye and rng.random() < self.aug.fisheye:
                img, boxes, labels = A.fisheye(img, boxes, labels, rng)
            img = A.hsv_jitter(img, rng, self.aug.hsv_h, self.aug.hsv_s, self.aug.hsv_v)
            if self.aug.greyscale and rng.random() < self.aug.greyscale:
                img = A.greyscale(img)
            if self.aug.blur and rng.random() < self.aug.blur:
                img = A.blur(img, rng)
            if rng.random() < self.aug.fliplr:
                img, boxes = A.hflip(img, boxes)
        chw = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)))  # BGR -> RGB, CHW uint8
        return chw, boxes.astype(np.float32), labels.astype(np.int64), self.class_mask(i)


def collate(batch) -> dict[str, torch.Tensor]:
    """Stack uint8 images; pad targets to the batch's max count with a mask (static-friendly);
    `class_mask` [B,nc]: the class logits each image trains."""
    imgs, boxes, labels, class_masks = zip(*batch)
    m = max(1, max(len(b) for b in boxes))
    n = len(batch)
    gt_boxes = torch.zeros(n, m, 4)
    gt_labels = torch.zeros(n, m, dtype=torch.long)
    gt_mask = torch.zeros(n, m, dtype=torch.bool)
    for k, (b, l) in enumerate(zip(boxes, labels)):
        gt_boxes[k, : len(b)] = torch.from_numpy(b)
        gt_labels[k, : len(l)] = torch.from_numpy(l)
        gt_mask[k, : len(b)] = True
    return {"images": torch.stack(imgs), "boxes": gt_boxes, "labels": gt_labels, "mask": gt_mask,
            "class_mask": torch.from_numpy(np.stack(class_masks))}
