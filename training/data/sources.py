"""Several labelled sources trained as one: each source's label names mapped to the model's classes.

The sources label different things. A box's *target* says which model classes its label allows:
an exact label allows one class (`fall`), a coarse one allows a set (`normal` = any posture but a
fall), an ambiguous one allows nothing and is ignored (`danger`). Target ids 0..nc-1 are the
exact classes, so a single-source dataset's labels are its targets unchanged; coarse sets and the
ignore target get the ids after them.

The one declared place of these mappings is a data config such as
`training/configs/all-sources.yaml`:

    names: [fall, sit, stand, lie]          # the model's classes, index = class id
    sources:
      ip-cameras:
        path: ip-cameras                    # under $FALLDET_DATA (or absolute)
        weight: 1.0                         # share of each epoch's samples
        classes: {fall: fall, normal: [sit, stand]}
      care-home:
        path: care-home
        classes: {fall: fall, lie: lie, sit: sit, person: [sit, stand], patient: [sit, stand, lie],
                  danger: ignore}
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

IGNORE = "ignore"
DROP = -1  # a source label mapped nowhere: its boxes are left out


def data_root() -> Path:
    """$FALLDET_DATA, the folder that holds every source (default ../shared/data)."""
    return Path(os.environ.get("FALLDET_DATA", "../shared/data"))


@dataclass(frozen=True)
class LabelSpace:
    """The model's classes and every target a label can name: target id -> allowed class ids."""

    names: tuple[str, ...]
    targets: tuple[tuple[str, frozenset[int]], ...]  # (description, allowed classes); empty set = ignore

    @classmethod
    def exact(cls, names: list[str] | tuple[str, ...]) -> "LabelSpace":
        return cls(tuple(names), tuple((n, frozenset({i})) for i, n in enumerate(names)))

    @property
    def nc(self) -> int:
        return len(self.names)

    def target_for(self, allowed: frozenset[int]) -> tuple["LabelSpace", int]:
        """The target id of a set of allowed classes, adding it when new (returns the grown space)."""
        for t, (_, a) in enumerate(self.targets):
            if a == allowed and (len(a) != 1 or t < self.nc):
                return self, t
        desc = IGNORE if not allowed else "|".join(self.names[c] for c in sorted(allowed))
        return LabelSpace(self.names, (*self.targets, (desc, allowed))), len(self.targets)

    def allowed_matrix(self) -> np.ndarray:
        """[T, nc] bool: which classes each target allows (an all-False row is an ignored box)."""
        m = np.zeros((len(self.targets), self.nc), bool)
        for t, (_, allowed) in enumerate(self.targets):
            m[t, sorted(allowed)] = True
        return m

    def is_exact(self, target: int) -> bool:
        return target < self.nc


@dataclass(frozen=True)
class Source:
    """One labelled data source and how its label ids become targets."""

    name: str
    root: Path
    train: Path
    val: Path | None  # None: train only (no fair held-out camera, e.g. clinic-cctv)
    label_names: tuple[str, ...]  # the source's own names, index = its label id
    to_target: tuple[int, ...]  # source label id -> target id (DROP: left out)
    weight: float = 1.0
    # The model classes whose logits this source's images train (None: all). A source that boxes
    # only some people (fall-poses boxes the fallen, not the bystanders) trains only those classes:
    # its unboxed regions say "not a fall", never "nobody here" or "not standing".
    trains: tuple[int, ...] | None = None
    # Per-label multipliers of an image's chance to be drawn (the largest of its boxes' labels):
    # rare postures that decide alerts (lying, sitting) are seen more often.
    boost: tuple[tuple[int, float], ...] = ()

    @property
    def boxes_everyone(self) -> bool:
        """Whether every person in its images is boxed (person AP and background are meaningful)."""
        return self.trains is None

    def split_dir(self, split: str) -> Path | None:
        return {"train": self.train, "val": self.val}[split]


@dataclass(frozen=True)
class DataSpec:
    """What a data config says: the label space and its sources (one for a plain data.yaml)."""

    space: LabelSpace
    sources: tuple[Source, ...]

    @property
    def names(self) -> list[str]:
        return list(self.space.names)

    @property
    def train(self) -> Path:
        """The train folder of a single-source spec (older callers)."""
        return self._only().train

    @property
    def val(self) -> Path:
        return self._only().val

    def _only(self) -> Source:
        if len(self.sources) != 1:
            raise ValueError(f"this data config has {len(self.sources)} sources; pick a split per source")
        return self.sources[0]


def _yaml_names(doc: dict) -> list[str]:
    names = doc["names"]
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    return [str(n) for n in names]


def _split_dirs(yaml_path: Path) -> tuple[Path, Path | None, list[str]]:
    doc = yaml.safe_load(yaml_path.read_text())
    root = (yaml_path.parent / doc.get("path", ".")).resolve()
    return root / doc["train"], (root / doc["val"]) if doc.get("val") else None, _yaml_names(doc)


def _resolve(path: str, base: Path) -> Path:
    p = Path(os.path.expandvars(path))
    return p if p.is_absolute() else base / p


def load_data_config(path: str | Path) -> DataSpec:
    """A plain YOLO data.yaml (one source, labels = classes) or a multi-source config (`sources:`)."""
    path = Path(path)
    doc = yaml.safe_load(path.read_text())
    if "sources" not in doc:
        train, val, names = _split_dirs(path)
        space = LabelSpace.exact(names)
        src = Source(path.parent.name, path.parent, train, val, tuple(names), tuple(range(len(names))))
        return DataSpec(space, (src,))
    names = [str(n) for n in doc["names"]]
    if "fall" not in names:
        raise ValueError(f"{path}: the model's classes must include 'fall', got {names}")
    space = LabelSpace.exact(names)
    sources = []
    for sname, sdoc in doc["sources"].items():
        unknown = set(sdoc) - {"path", "weight", "classes", "trains", "boost"}
        if unknown:
            raise ValueError(f"{path}: source {sname!r} has unknown keys {sorted(unknown)}")
        folder = _resolve(sdoc.get("path", sname), data_root())
        yaml_path = folder / "data.yaml"
        if not yaml_path.exists():
            raise FileNotFoundError(f"source {sname!r}: {yaml_path} not found (is FALLDET_DATA set? see docs/data.md)")
        train, val, label_names = _split_dirs(yaml_path)
        cmap = sdoc.get("classes", {})
        unknown_labels = set(cmap) - set(label_names)
        if unknown_labels:
            raise ValueError(f"{path}: source {sname!r} maps labels it does not have: {sorted(unknown_labels)} "
                             f"(its labels: {label_names})")
        to_target = []
        for ln in label_names:
            if ln not in cmap:
                to_target.append(DROP)
                continue
            space, t = space.target_for(_allowed(cmap[ln], names, f"{sname}.{ln}"))
            to_target.append(t)
        weight = float(sdoc.get("weight", 1.0))
        if weight <= 0:
            raise ValueError(f"{path}: source {sname!r} weight must be > 0")
        trains = None
        if "trains" in sdoc:
            trains = tuple(sorted(_allowed(sdoc["trains"], names, f"{sname}.trains")))
            outside = sorted({names[c] for t in to_target if t != DROP for c in space.targets[t][1]} -
                             {names[c] for c in trains})
            if outside:
                raise ValueError(f"{path}: source {sname!r} labels classes {outside} it does not train ('trains')")
        boost = []
        for label, factor in (sdoc.get("boost") or {}).items():
            if label not in label_names:
                raise ValueError(f"{path}: source {sname!r} boosts a label it does not have: {label!r}")
            if float(factor) <= 0:
                raise ValueError(f"{path}: source {sname!r} boost of {label!r} must be > 0")
            boost.append((label_names.index(label), float(factor)))
        sources.append(Source(sname, folder, train, val, tuple(label_names), tuple(to_target), weight, trains,
                              tuple(boost)))
    return DataSpec(space, tuple(sources))


def _allowed(value, names: list[str], where: str) -> frozenset[int]:
    """A mapping value: a class name, a list of class names, or `ignore`."""
    if value == IGNORE:
        return frozenset()
    values = [value] if isinstance(value, str) else list(value)
    bad = [v for v in values if v not in names]
    if bad or not values:
        raise ValueError(f"{where}: {bad or values} are not model classes {names} (or 'ignore')")
    return frozenset(names.index(v) for v in values)
