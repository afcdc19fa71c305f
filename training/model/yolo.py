"""YOLO11 backbone + PAN neck + head, built from a ModelConfig.

Layer plan (published YOLO11, channels before width scaling):
backbone  Conv64/2 Conv128/2 C3k2-256 Conv256/2 C3k2-512 Conv512/2 C3k2-512(c3k) Conv1024/2 C3k2-1024(c3k) SPPF C2PSA
neck      up+P4 C3k2-512 up+P3 C3k2-256 (P3 out) Conv/2 +C3k2-512 (P4 out) Conv/2 +C2PSA C3k2-1024(c3k) (P5 out)
With `spdconv` every stride-2 Conv except the stem (6 of them) becomes SPDConv.
With `backbone: mobilenetv2` the backbone above (up to SPPF) is an ImageNet-pretrained MobileNetV2
(training/model/backbones.py) tapped at strides 8/16/32; SPPF, C2PSA, the neck and the head stay.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from training.boxes import decode_boxes, make_anchors
from training.model.backbones import MobileNetV2Backbone
from training.model.blocks import C2PSA, C3k2, SPPF, Conv, downsample
from training.model.head import Detect, DetectLQE, HeadOutput
from training.presets import ModelConfig

SCALES = {"n": (0.50, 0.25, 1024), "s": (0.50, 0.50, 1024)}  # depth, width, max channels


def _ch(c: int, width: float, max_ch: int) -> int:
    return int(math.ceil(min(c, max_ch) * width / 8) * 8)


def _n(n: int, depth: float) -> int:
    return max(round(n * depth), 1)


class YOLO(nn.Module):
    """The detector. forward() -> HeadOutput (training); predict() -> decoded boxes and final scores."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        depth, width, mc = SCALES[cfg.scale]
        c = lambda x: _ch(x, width, mc)  # noqa: E731
        n2 = _n(2, depth)
        spd = cfg.spdconv
        self.backbone: MobileNetV2Backbone | None = None
        if cfg.backbone == "mobilenetv2":
            self.backbone = MobileNetV2Backbone(init=cfg.backbone_init)
            p3c, p4c, p5c = self.backbone.out_channels
        else:
            p3c, p4c, p5c = c(512), c(512), c(1024)
            self.stem = Conv(3, c(64), 3, 2)  # P1/2 (always a strided conv: SPD on raw pixels only loses detail)
            self.down1 = downsample(c(64), c(128), spd)  # P2/4
            self.c2 = C3k2(c(128), c(256), n2, False, 0.25)
            self.down2 = downsample(c(256), c(256), spd)  # P3/8
            self.c3 = C3k2(c(256), c(512), n2, False, 0.25)
            self.down3 = downsample(c(512), c(512), spd)  # P4/16
            self.c4 = C3k2(c(512), c(512), n2, True)
            self.down4 = downsample(c(512), c(1024), spd)  # P5/32
            self.c5 = C3k2(c(1024), c(1024), n2, True)
        self.sppf = SPPF(p5c, c(1024), 5)
        self.psa = C2PSA(c(1024), c(1024), n2)
        # neck (top-down then bottom-up)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4 = C3k2(c(1024) + p4c, c(512), n2, False)
        self.td3 = C3k2(c(512) + p3c, c(256), n2, False)
        self.bu_down3 = downsample(c(256), c(256), spd)
        self.bu4 = C3k2(c(256) + c(512), c(512), n2, False)
        self.bu_down4 = downsample(c(512), c(512), spd)
        self.bu5 = C3k2(c(512) + c(1024), c(1024), n2, True)
        head_cls = DetectLQE if cfg.lqe else Detect
        self.head: Detect = head_cls(cfg.nc, (c(256), c(512), c(1024)), (8, 16, 32), cfg.reg_max)
        self.stride = 32
        self.head.init_bias()

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backbone outputs at strides 8, 16, 32 (P5 before SPPF)."""
        if self.backbone is not None:
            return self.backbone(x)
        x = self.c2(self.down1(self.stem(x)))
        p3 = self.c3(self.down2(x))
        p4 = self.c4(self.down3(p3))
        return p3, p4, self.c5(self.down4(p4))

    def forward(self, x: torch.Tensor) -> HeadOutput:
        p3, p4, p5 = self.features(x)
        p5 = self.psa(self.sppf(p5))
        t4 = self.td4(torch.cat([self.up(p5), p4], 1))
        o3 = self.td3(torch.cat([self.up(t4), p3], 1))
        o4 = self.bu4(torch.cat([self.bu_down3(o3), t4], 1))
        o5 = self.bu5(torch.cat([self.bu_down4(o4), p5], 1))
        return self.head([o3, o4, o5])

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,3,S,S] in [0,1] -> boxes [B,A,4] xyxy input pixels, scores [B,A,nc] final scores."""
        out = self(x)
        anchors, strides = make_anchors(out.shapes, out.strides, x.device, x.dtype)
        boxes = decode_boxes(out.dist, anchors, self.cfg.reg_max) * strides
        return boxes, out.scores()


def build_model(cfg: ModelConfig, pretrained: bool = False) -> YOLO:
    """The network of a config; `pretrained` loads a pretrained backbone's weights (training start)."""
    model = YOLO(cfg)
    if pretrained and model.backbone is not None:
        model.backbone.load_pretrained()
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gflops(model: nn.Module, imgsz: int) -> float:
    """GFLOPs of one forward at `imgsz` (2 x multiply-adds, torch's FlopCounterMode)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, imgsz, imgsz))
    return counter.get_total_flops() / 1e9
