"""One evaluation pass of a classifier for the NC study: train loss and accuracy, the
streaming class statistics of train-set last-layer features, test accuracy and test features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.stats import ClassStats

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Results of :func:`evaluate` for one model state."""

    stats: ClassStats
    """Class statistics of the train-set last-layer features."""
    train_loss: float
    """Mean cross-entropy over the train set, bias included."""
    train_accuracy: float
    """Fraction of train samples classified correctly, in [0, 1]."""
    test_accuracy: float
    """Fraction of test samples classified correctly, in [0, 1]."""
    test_features: torch.Tensor
    """Test-set last-layer features, float32 on the CPU, (N_test, p)."""
    test_labels: torch.Tensor
    """Test labels, int64 on the CPU, (N_test,)."""


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _check_split(name: str, inputs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if labels.dim() != 1:
        raise ValueError(f"{name}_labels must be 1-D, got shape {tuple(labels.shape)}")
    if inputs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{name}_inputs has {inputs.shape[0]} samples but {name}_labels has {labels.shape[0]}; "
            "pass one label per input"
        )
    # Checked here because cross_entropy on CUDA turns a bad label into a device-side assert.
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name}_labels must lie in 0..{num_classes - 1} for a classifier with {num_classes} outputs, "
            f"got values from {int(labels.min())} to {int(labels.max())}"
        )


def _ratio(numerator: torch.Tensor, count: int, quantity: str) -> float:
    if count == 0:
        logger.warning("quantity=%s result=nan reason=no_samples", quantity)
        return float("nan")
    return float(numerator.item()) / count


def evaluate(
    model: nn.Module,
    train_inputs: torch.Tensor,
    train_labels: torch.Tensor,
    test_inputs: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    batch_size: int = 1000,
) -> Evaluation:
    """Run the model over the train and test sets once, in eval mode and without gradients.

    ``model`` must provide ``model.features(x)`` (B, p) and ``model.classifier``, an
    ``nn.Linear`` with ``model(x) == model.classifier(model.features(x))``. Each batch
    runs features then classifier once, so the pass costs about one forward pass.
    Inputs may be on the CPU or on the model's device, and batches are moved to the
    model's device. The model's train/eval mode is restored afterwards, also on error.
    An empty split gives NaN loss or accuracy with a logged warning.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Linear) or not callable(getattr(model, "features", None)):
        raise TypeError(
            "model must have a features(x) method and a classifier attribute of type nn.Linear, "
            f"got {type(model).__name__}"
        )
    num_classes, dim = classifier.out_features, classifier.in_features
    _check_split("train", train_inputs, train_labels, num_classes)
    _check_split("test", test_inputs, test_labels, num_classes)

    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            stats = ClassStats(num_classes, dim, device=device)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            train_correct = torch.zeros((), dtype=torch.int64, device=device)
            for start in range(0, train_inputs.shape[0], batch_size):
                inputs = train_inputs[start : start + batch_size].to(device)
                labels = train_labels[start : start + batch_size].to(device=device, dtype=torch.int64)
                features = model.features(inputs)
                logits = classifier(features)
                loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").to(torch.float64)
                train_correct += (logits.argmax(dim=1) == labels).sum()
                stats.update(features, labels)

            test_correct = torch.zeros((), dtype=torch.int64, device=device)
            feature_batches = []
            for start in range(0, test_inputs.shape[0], batch_size):
                inputs = test_inputs[start : start + batch_size].to(device)
                labels = test_labels[start : start + batch_size].to(device=device, dtype=torch.int64)
                features = model.features(inputs)
                test_correct += (classifier(features).argmax(dim=1) == labels).sum()
                feature_batches.append(features.float())
    finally:
        model.train(was_training)

    if feature_batches:
        test_features = torch.cat(feature_batches).cpu()
    else:
        test_features = torch.zeros(0, dim, dtype=torch.float32)
    num_train = int(train_inputs.shape[0])
    return Evaluation(
        stats=stats,
        train_loss=_ratio(loss_sum, num_train, "train_loss"),
        train_accuracy=_ratio(train_correct, num_train, "train_accuracy"),
        test_accuracy=_ratio(test_correct, int(test_inputs.shape[0]), "test_accuracy"),
        test_features=test_features,
        test_labels=test_labels.detach().to(device="cpu", dtype=torch.int64).clone(),
    )
