"""Benchmark of the NC metric engine: (a) streaming statistics plus metrics against the
dense float64 reference, (b) evaluate() against a bare no-grad forward pass.

Run from the repository root: ``python benchmarks/bench_metrics.py``. Each timing is
the best of ``--repeats`` rounds, and both sides of a ratio alternate within each round.
"""

from __future__ import annotations

import argparse
import inspect
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.evaluation import evaluate  # noqa: E402
from pipeline.metrics import METRIC_NAMES, compute_metrics  # noqa: E402
from pipeline.stats import ClassStats  # noqa: E402
from tests.dense_reference import dense_metrics  # noqa: E402


def best_times(functions: list, repeats: int) -> tuple[list[float], list]:
    """Return the shortest wall time of each function over ``repeats`` rounds, and its last result.

    The functions run in turn within each round, so that a change in machine load
    during the run affects both sides of a ratio alike.
    """
    times = [math.inf] * len(functions)
    results = [None] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            results[index] = function()
            times[index] = min(times[index], time.perf_counter() - start)
    return times, results


# -- (a) metrics from features ---------------------------------------------------


def make_features(num_samples: int, dim: int, num_classes: int, num_test: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    centres = 3.0 * torch.randn(num_classes, dim, generator=generator)
    features = (centres[labels] + torch.randn(num_samples, dim, generator=generator)).float()
    test_labels = torch.randint(0, num_classes, (num_test,), generator=generator)
    test_features = (centres[test_labels] + 2.0 * torch.randn(num_test, dim, generator=generator)).float()
    weight = (torch.randn(num_classes, dim, generator=generator) + 0.1 * centres).float()
    return features, labels, weight, test_features


def streaming_metrics(features, labels, weight, test_features, num_classes: int, batch_size: int) -> dict[str, float]:
    stats = ClassStats(num_classes, features.shape[1])
    for start in range(0, features.shape[0], batch_size):
        stats.update(features[start : start + batch_size], labels[start : start + batch_size])
    return compute_metrics(stats, weight, test_features=test_features)


def bench_metrics(args) -> None:
    features, labels, weight, test_features = make_features(args.samples, args.dim, args.classes, args.test_samples, seed=0)
    print(
        f"(a) metrics: N={args.samples} p={args.dim} K={args.classes} N_test={args.test_samples} "
        f"batch={args.batch_size} float32 features"
    )

    features_np, labels_np, weight_np, test_np = features.numpy(), labels.numpy(), weight.numpy(), test_features.numpy()
    (stream_time, dense_time), (stream_result, dense_result) = best_times(
        [
            lambda: streaming_metrics(features, labels, weight, test_features, args.classes, args.batch_size),
            lambda: dense_metrics(features_np, labels_np, weight_np, test_np),
        ],
        args.repeats,
    )

    relative = {
        name: abs(stream_result[name] - dense_result[name]) / abs(dense_result[name])
        for name in METRIC_NAMES
        if name != "M_sv_min"
    }
    worst = max(relative, key=relative.get)
    print(f"    streaming + compute_metrics: {stream_time:8.3f} s")
    print(f"    dense float64 reference:     {dense_time:8.3f} s")
    print(f"    speed-up: {dense_time / stream_time:.1f}x (target >= 5x)")
    print(f"    max relative difference: {relative[worst]:.2e} ({worst})")
    print(
        f"    M_sv_min (zero up to rounding): {stream_result['M_sv_min']:.1e} streaming, "
        f"{dense_result['M_sv_min']:.1e} dense"
    )


# -- (b) evaluation against a forward pass ---------------------------------------


class SmallConvNet(nn.Module):
    """Fallback network with the features/classifier API when pipeline.models is absent."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Linear(64, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_network(num_classes: int) -> tuple[nn.Module, str]:
    try:
        from pipeline.models import build_model
    except ImportError:
        return SmallConvNet(num_classes), "SmallConvNet (benchmark fallback)"
    parameters = inspect.signature(build_model).parameters
    if "input_shape" in parameters:
        model = build_model("resnet9", num_classes=num_classes, input_shape=(1, 32, 32), width=0.125)
    else:
        model = build_model("resnet9", num_classes=num_classes, in_channels=1, width=0.125)
    return model, "pipeline.models resnet9, width 0.125"


def bare_forward(model: nn.Module, inputs: list[torch.Tensor], batch_size: int) -> None:
    model.eval()
    with torch.no_grad():
        for split in inputs:
            for start in range(0, split.shape[0], batch_size):
                model(split[start : start + batch_size])


def bench_evaluation(args) -> None:
    torch.manual_seed(0)
    model, description = build_network(10)
    generator = torch.Generator().manual_seed(1)
    train_inputs = torch.randn(args.images, 1, 32, 32, generator=generator)
    train_labels = torch.randint(0, 10, (args.images,), generator=generator)
    test_inputs = torch.randn(args.test_images, 1, 32, 32, generator=generator)
    test_labels = torch.randint(0, 10, (args.test_images,), generator=generator)
    dim = model.classifier.in_features
    print(
        f"(b) evaluation: {description}, p={dim}, {args.images} train + {args.test_images} test "
        f"random 1x32x32 images, batch={args.eval_batch_size}"
    )

    bare_forward(model, [train_inputs[:8]], 8)  # warm-up of the kernels
    (forward_time, evaluate_time), (_, result) = best_times(
        [
            lambda: bare_forward(model, [train_inputs, test_inputs], args.eval_batch_size),
            lambda: evaluate(model, train_inputs, train_labels, test_inputs, test_labels, batch_size=args.eval_batch_size),
        ],
        args.repeats,
    )
    assert math.isfinite(result.train_loss)
    print(f"    bare no_grad forward (train + test): {forward_time:8.3f} s")
    print(f"    evaluate (train + test):             {evaluate_time:8.3f} s")
    print(f"    ratio: {evaluate_time / forward_time:.2f}x (target <= 1.2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000, help="train features N in (a)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension p in (a)")
    parser.add_argument("--classes", type=int, default=10, help="classes K in (a)")
    parser.add_argument("--test-samples", type=int, default=10_000, help="test features for NC4 in (a)")
    parser.add_argument("--batch-size", type=int, default=1000, help="rows per ClassStats.update in (a)")
    parser.add_argument("--images", type=int, default=2000, help="train images in (b)")
    parser.add_argument("--test-images", type=int, default=500, help="test images in (b)")
    parser.add_argument("--eval-batch-size", type=int, default=500, help="batch size in (b)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing; the best is reported")
    args = parser.parse_args()

    print(
        f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"{torch.get_num_threads()} torch threads, CUDA available: {torch.cuda.is_available()}"
    )
    bench_metrics(args)
    bench_evaluation(args)


if __name__ == "__main__":
    main()
