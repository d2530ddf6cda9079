"""Tests of pipeline.evaluation.evaluate on a tiny model with the features/classifier API."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.evaluation import Evaluation, evaluate
from pipeline.stats import ClassStats

NUM_CLASSES = 3


class TinyClassifier(nn.Module):
    """Linear + ReLU feature map with dropout, so that eval and train mode give different features."""

    def __init__(self, in_features: int = 6, dim: int = 8, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, dim), nn.ReLU(), nn.Dropout(0.5))
        self.classifier = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def make_data(seed: int = 0, num_train: int = 250, num_test: int = 70):
    generator = torch.Generator().manual_seed(seed)
    train_inputs = torch.randn(num_train, 6, generator=generator)
    train_labels = torch.randint(0, NUM_CLASSES, (num_train,), generator=generator)
    test_inputs = torch.randn(num_test, 6, generator=generator)
    test_labels = torch.randint(0, NUM_CLASSES, (num_test,), generator=generator)
    return train_inputs, train_labels, test_inputs, test_labels


def make_model(seed: int = 0) -> TinyClassifier:
    torch.manual_seed(seed)
    return TinyClassifier()


def test_evaluate_matches_full_feature_matrix():
    model = make_model()
    train_inputs, train_labels, test_inputs, test_labels = make_data()
    result = evaluate(model, train_inputs, train_labels, test_inputs, test_labels, batch_size=64)

    model.eval()
    with torch.no_grad():
        train_features = model.features(train_inputs)
        train_logits = model(train_inputs)
        test_features = model.features(test_inputs)
        test_logits = model(test_inputs)
    expected = ClassStats.from_features(train_features, train_labels, NUM_CLASSES)

    assert isinstance(result, Evaluation)
    torch.testing.assert_close(result.stats.counts, expected.counts, rtol=0, atol=0)
    torch.testing.assert_close(result.stats.means(), expected.means(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(result.stats.scatter(), expected.scatter(), rtol=1e-6, atol=1e-6)
    assert result.train_loss == pytest.approx(F.cross_entropy(train_logits, train_labels).item(), rel=1e-6)
    assert result.train_accuracy == pytest.approx((train_logits.argmax(1) == train_labels).float().mean().item())
    assert result.test_accuracy == pytest.approx((test_logits.argmax(1) == test_labels).float().mean().item())
    torch.testing.assert_close(result.test_features, test_features, rtol=1e-6, atol=1e-6)
    assert result.test_features.dtype == torch.float32
    assert result.test_features.device.type == "cpu"
    assert result.test_labels.dtype == torch.int64
    torch.testing.assert_close(result.test_labels, test_labels, rtol=0, atol=0)


def test_evaluate_restores_train_mode():
    model = make_model()
    model.train()
    evaluate(model, *make_data())
    assert model.training
    assert model.body[2].training

    model.eval()
    evaluate(model, *make_data())
    assert not model.training


class FailingClassifier(TinyClassifier):
    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("feature map failed")


def test_evaluate_restores_mode_after_error():
    torch.manual_seed(0)
    model = FailingClassifier()
    model.train()
    with pytest.raises(RuntimeError, match="feature map failed"):
        evaluate(model, *make_data())
    assert model.training


def test_evaluate_rejects_labels_out_of_range():
    train_inputs, train_labels, test_inputs, test_labels = make_data()
    with pytest.raises(ValueError, match=r"test_labels must lie in 0..2 for a classifier with 3 outputs, got values from -1"):
        evaluate(make_model(), train_inputs, train_labels, test_inputs, test_labels - 1)


def test_evaluate_uses_eval_mode_and_no_grad():
    model = make_model()
    model.train()
    first = evaluate(model, *make_data())
    second = evaluate(model, *make_data())
    # Dropout is off in eval mode, so two passes agree exactly.
    torch.testing.assert_close(first.stats.scatter(), second.stats.scatter(), rtol=0, atol=0)
    assert not first.test_features.requires_grad
    assert all(parameter.grad is None for parameter in model.parameters())


def test_evaluate_batch_size_does_not_change_results():
    model = make_model()
    data = make_data()
    whole = evaluate(model, *data, batch_size=1000)
    small = evaluate(model, *data, batch_size=7)
    torch.testing.assert_close(small.stats.scatter(), whole.stats.scatter(), rtol=1e-6, atol=1e-6)
    assert small.train_loss == pytest.approx(whole.train_loss, rel=1e-6)
    assert small.train_accuracy == whole.train_accuracy


def test_evaluate_double_model_gives_float32_test_features():
    model = make_model().double()
    train_inputs, train_labels, test_inputs, test_labels = make_data()
    result = evaluate(model, train_inputs.double(), train_labels, test_inputs.double(), test_labels)
    assert result.test_features.dtype == torch.float32
    assert math.isfinite(result.train_loss)


def test_evaluate_empty_test_set_nan_with_warning(caplog):
    train_inputs, train_labels, _, _ = make_data()
    result = evaluate(make_model(), train_inputs, train_labels, torch.zeros(0, 6), torch.zeros(0, dtype=torch.int64))
    assert math.isnan(result.test_accuracy)
    assert tuple(result.test_features.shape) == (0, 8)
    assert "quantity=test_accuracy result=nan reason=no_samples" in caplog.text


def test_evaluate_rejects_model_without_api():
    with pytest.raises(TypeError, match="features"):
        evaluate(nn.Linear(6, 3), *make_data())


def test_evaluate_rejects_mismatched_labels():
    train_inputs, train_labels, test_inputs, test_labels = make_data()
    with pytest.raises(ValueError, match="train_inputs has 250 samples but train_labels has 249"):
        evaluate(make_model(), train_inputs, train_labels[:-1], test_inputs, test_labels)


def test_evaluate_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        evaluate(make_model(), *make_data(), batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluate_cuda_model_with_cpu_inputs():
    model = make_model()
    data = make_data()
    on_cpu = evaluate(model, *data)
    on_cuda = evaluate(model.cuda(), *data)
    assert on_cuda.stats.device.type == "cuda"
    assert on_cuda.test_features.device.type == "cpu"
    torch.testing.assert_close(on_cuda.stats.scatter().cpu(), on_cpu.stats.scatter(), rtol=1e-4, atol=1e-5)
