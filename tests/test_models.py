import pytest
import torch

from pipeline.models import ARCHITECTURES, build_model


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize(("shape", "width", "dim"), [((1, 28, 28), 1.0, 512), ((3, 32, 32), 0.125, 64)])
def test_features_feed_classifier(architecture, shape, width, dim):
    torch.manual_seed(0)
    model = build_model(architecture, num_classes=10, input_shape=shape, width=width).eval()
    x = torch.randn(3, *shape)
    features = model.features(x)
    assert features.shape == (3, dim)
    assert model.classifier.weight.shape == (10, dim)
    torch.testing.assert_close(model(x), model.classifier(features))


def test_resnet9_parameter_count_at_width_one():
    # Bias-free 3x3 convs, each followed by BatchNorm (2 parameters per channel), and a 512x10 head.
    convs = [(1, 64), (64, 128), (128, 128), (128, 128), (128, 256), (256, 512), (512, 512), (512, 512)]
    expected = sum(9 * cin * cout + 2 * cout for cin, cout in convs) + 512 * 10 + 10
    model = build_model("resnet9", num_classes=10, input_shape=(1, 28, 28), width=1.0)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_vgg9_has_eight_conv_layers():
    model = build_model("vgg9", num_classes=10, input_shape=(3, 32, 32))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 8
    assert len(linears) == 1


def test_grey_inputs_padded_to_32():
    model = build_model("vgg9", num_classes=10, input_shape=(1, 28, 28), width=0.125)
    # Five 2x2 poolings reduce 32x32 to 1x1, so a 28x28 input works only after padding.
    assert model.features(torch.zeros(2, 1, 28, 28)).shape == (2, 64)


def test_invalid_names_and_width_rejected():
    with pytest.raises(ValueError, match="unknown architecture 'resnet18'"):
        build_model("resnet18", num_classes=10, input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="invalid width multiplier 0"):
        build_model("resnet9", num_classes=10, input_shape=(1, 28, 28), width=0)
