"""The unconstrained feature model (UFM) of the study's ablation: free last-layer
features H trained jointly with the classifier W, b by full-batch cross-entropy, with
weight decay on every parameter. Its training job writes the same history, dumps and
checkpoint as ``pipeline.training.train_run``, so the metrics and report rules apply."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import RunConfig
from pipeline.metrics import compute_metrics, compute_spectra
from pipeline.models import scaled_width
from pipeline.optimizers import create_optimizer
from pipeline.stats import ClassStats
from pipeline.training import evaluation_epochs, finish_run, parameters_finite, select_device, set_learning_rate, step_decay_lr

log = logging.getLogger(__name__)

UFM_NAME = "ufm"
"""Architecture name of the UFM, and the name of its pseudo-dataset: the UFM has no input data."""

UFM_NUM_CLASSES = 10
UFM_BASE_DIM = 512
"""Feature dimension d at width 1; a run uses ``round(512 * width)``."""

UFM_DEFAULT_PER_CLASS = 1000
"""Samples per class when ``train_per_class`` is null, so N = 10,000 by default."""


class UnconstrainedFeatureModel(nn.Module):
    """Free features H and a linear classifier: logits = H W^T + b.

    ``features`` is H stored as (N, d), one row h_n per sample, and ``classifier`` is an
    ``nn.Linear(d, K)`` with PyTorch's default initialisation. H starts from N(0, 1/d)
    entries, so that every h_n has norm about 1.
    Creating the model draws from torch's global generator: seed it first.
    """

    def __init__(self, num_samples: int, dim: int, num_classes: int):
        super().__init__()
        if num_samples < num_classes or dim < 1 or num_classes < 2:
            raise ValueError(
                f"invalid UFM size: num_samples={num_samples}, dim={dim}, num_classes={num_classes}; "
                "expected num_classes >= 2, num_samples >= num_classes and dim >= 1"
            )
        self.classifier = nn.Linear(dim, num_classes)
        self.features = nn.Parameter(torch.randn(num_samples, dim) / math.sqrt(dim))

    def forward(self) -> torch.Tensor:
        """Return the logits of every sample, (N, K)."""
        return self.classifier(self.features)


@contextlib.contextmanager
def flushed_denormals():
    """Flush subnormal floats to zero on the CPU inside the block, then turn flushing off (torch's default).

    Once the UFM separates its classes, the softmax gradients underflow to subnormal float32
    values (below 1.2e-38), and CPU arithmetic on them is slow. Measured on one busy core
    at d = 512, N = 10,000: 289 ms per AdamW step with subnormals, 40 ms flushed. Flushing
    changes each update by less than about 1e-30 times the learning rate, because Adam's
    divisor is at least eps = 1e-8 and SGD's step is the gradient itself.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def ufm_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """Return the balanced labels ``n mod K`` of samples 0..N-1."""
    return torch.arange(num_samples) % num_classes


def build_ufm(cfg: RunConfig) -> UnconstrainedFeatureModel:
    """Build the UFM of a run: d = round(512 * width), K = 10, N = K * train_per_class."""
    per_class = cfg.train_per_class if cfg.train_per_class is not None else UFM_DEFAULT_PER_CLASS
    return UnconstrainedFeatureModel(per_class * UFM_NUM_CLASSES, scaled_width(UFM_BASE_DIM, cfg.width), UFM_NUM_CLASSES)


def ufm_snapshot(model: UnconstrainedFeatureModel, labels: torch.Tensor) -> tuple[dict, dict]:
    """Evaluate the UFM: return a history row and the dump of what the metrics need.

    The UFM has no test set, so test accuracy is NaN and the dump stores no test
    features, which leaves NC4 out of the metrics.
    """
    with torch.no_grad():
        features = model.features.detach()
        logits = model.classifier(features)
        train_loss = float(F.cross_entropy(logits.double(), labels))
        train_accuracy = float((logits.argmax(dim=1) == labels).double().mean())
        stats = ClassStats(model.classifier.out_features, features.shape[1], device=features.device)
        stats.update(features, labels)
    weight = model.classifier.weight.detach().to("cpu", torch.float64)
    bias = model.classifier.bias.detach().to("cpu", torch.float64)
    metrics = compute_metrics(stats, weight, bias)
    spectra = compute_spectra(stats, weight)
    row = {
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "test_accuracy": math.nan,
        **metrics,
        "W_singular_values": [float(v) for v in spectra["W_singular_values"]],
        "M_singular_values": [float(v) for v in spectra["M_singular_values"]],
    }
    dump = {
        "stats": stats.state_dict(),
        "weight": weight,
        "bias": bias,
        "test_features": None,
        "test_labels": None,
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "test_accuracy": math.nan,
    }
    return row, dump


def train_ufm_run(cfg: RunConfig, *, history_path: Path, dumps_path: Path, checkpoint_path: Path) -> pd.DataFrame:
    """Train the UFM of one grid point and write its history (Parquet), metric dumps and final checkpoint.

    ``cfg.epochs`` counts full-batch gradient steps and ``cfg.eval_every`` counts steps,
    so the history's ``epoch`` and ``step`` columns are equal. The loss is the mean
    cross-entropy over all N samples. ``batch_size`` and ``test_per_class`` are not used.
    A run whose loss or parameters become non-finite stops and is marked diverged, as in
    ``train_run``.

    NOTE: the learning rate follows the step decay of the image runs (x0.1 after 1/3 and
    2/3 of the steps), because the study states no schedule for its UFM runs.
    """
    if cfg.architecture != UFM_NAME or cfg.dataset != UFM_NAME:
        raise ValueError(
            f"invalid run for train_ufm_run: expected architecture and dataset {UFM_NAME!r}, "
            f"got {cfg.architecture!r} and {cfg.dataset!r}; use pipeline.training.train_run for image datasets"
        )
    device = select_device()
    torch.manual_seed(cfg.seed)
    model = build_ufm(cfg).to(device)
    num_samples, dim = model.features.shape
    labels = ufm_labels(num_samples, UFM_NUM_CLASSES).to(device)
    optimizer = create_optimizer(
        cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **cfg.optimizer_options
    )
    eval_points = set(evaluation_epochs(cfg.epochs, cfg.eval_every))
    log.info("start run=%s device=%s n_train=%d dim=%d steps=%d", cfg.run_id, device, num_samples, dim, cfg.epochs)

    rows: list[dict] = []
    dumps: dict[str, dict | None] = {}
    row, dumps["initial"] = ufm_snapshot(model, labels)
    rows.append({"epoch": 0, "step": 0, "lr": cfg.lr, **row})
    diverged = False
    step = 0
    started = time.perf_counter()

    with flushed_denormals():
        for step_index in range(cfg.epochs):
            # Set the learning rate of this step.
            lr = step_decay_lr(cfg.lr, step_index, cfg.epochs)
            set_learning_rate(optimizer, lr)

            # One full-batch gradient step.
            loss = F.cross_entropy(model(), labels)
            if not torch.isfinite(loss):
                diverged = True
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                diverged = not parameters_finite(model)
            if diverged:
                log.warning(
                    "diverged run=%s step=%d loss=%s: non-finite loss or parameters, so the run stops and is marked diverged",
                    cfg.run_id, step, loss.item(),
                )
                break

            # Evaluate NC metrics and accuracy.
            # The last step is always an evaluation point, so its dump is the final one.
            if step in eval_points:
                row, dumps["final"] = ufm_snapshot(model, labels)
                rows.append({"epoch": step, "step": step, "lr": lr, **row})
                log.info(
                    "step=%d/%d lr=%.3g train_loss=%.4g train_acc=%.4f NC0=%.4g NC1=%.4g NC3=%.4g elapsed_s=%.1f",
                    step, cfg.epochs, lr, row["train_loss"], row["train_accuracy"], row["NC0"], row["NC1"], row["NC3"],
                    time.perf_counter() - started,
                )

    return finish_run(
        cfg, model, optimizer, rows, dumps, diverged, step, started,
        history_path=history_path, dumps_path=dumps_path, checkpoint_path=checkpoint_path,
    )
