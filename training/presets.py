"""Typed presets: the paper's ablation (Table 3: baseline, A..G) and G on a pretrained backbone."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

BoxLoss = Literal["ciou", "inner_ciou"]
Backbone = Literal["yolo11", "mobilenetv2"]


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides the network and its box loss."""

    scale: Literal["n", "s"] = "n"
    nc: int = 3
    spdconv: bool = False  # stride-2 convs of backbone and neck (not the stem) -> space-to-depth + conv
    lqe: bool = False  # Detect_LQE head: score = sigmoid(cls) * q
    box_loss: BoxLoss = "ciou"
    inner_ratio: float = 0.7  # Inner-IoU auxiliary box scale
    reg_max: int = 16
    backbone: Backbone = "yolo11"  # mobilenetv2: ImageNet-pretrained features (spdconv then only in the neck)
    # the pretrained mobilenetv2's weights: "imagenet" (classification) or "ssdlite-person" (a TF
    # SSDLite person detector); it also sets the input scaling inside the graph
    backbone_init: str = "imagenet"

    def __post_init__(self) -> None:
        if self.backbone not in ("yolo11", "mobilenetv2"):
            raise ValueError(f"backbone must be 'yolo11' or 'mobilenetv2', got {self.backbone!r}")
        if self.backbone_init not in ("imagenet", "ssdlite-person"):
            raise ValueError(f"backbone_init must be 'imagenet' or 'ssdlite-person', got {self.backbone_init!r}")
        if self.scale not in ("n", "s"):
            raise ValueError(f"scale must be 'n' or 's', got {self.scale!r}")
        if self.box_loss not in ("ciou", "inner_ciou"):
            raise ValueError(f"box_loss must be 'ciou' or 'inner_ciou', got {self.box_loss!r}")
        if not 0 < self.inner_ratio <= 2:
            raise ValueError(f"inner_ratio must be in (0, 2], got {self.inner_ratio}")


PRESETS: dict[str, dict] = {
    "baseline": {},
    "A": {"lqe": True},
    "B": {"spdconv": True},
    "C": {"box_loss": "inner_ciou"},
    "D": {"lqe": True, "spdconv": True},
    "E": {"spdconv": True, "box_loss": "inner_ciou"},
    "F": {"lqe": True, "box_loss": "inner_ciou"},
    "G": {"lqe": True, "spdconv": True, "box_loss": "inner_ciou"},
}
# The same eight rows on the shipped model's pretrained MobileNetV2 backbone and neck (issue 26,
# docs/ablation.md): SPDConv then replaces only the neck's stride-2 convs. G-mnv2 is the shipped one.
PRESETS.update({f"{name}-mnv2": {"backbone": "mobilenetv2", **parts} for name, parts in list(PRESETS.items())})


def make_config(preset: str = "baseline", **overrides) -> ModelConfig:
    """Preset + explicit overrides; unknown presets or keys are errors, never silently ignored."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
    return replace(ModelConfig(), **{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})
