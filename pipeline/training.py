"""Training job of one grid point: the study's protocol (step decay of the
learning rate x0.1 after 1/3 and 2/3 of the epochs, no augmentation), NC
metrics through training, and the dumps that the metrics rule recomputes from."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.config import RunConfig
from pipeline.data import NUM_CLASSES, balanced_subset, load_prepared, normalised_inputs
from pipeline.evaluation import evaluate
from pipeline.metrics import compute_metrics, compute_spectra
from pipeline.models import build_model
from pipeline.optimizers import create_optimizer

log = logging.getLogger(__name__)

DUMP_FORMAT_VERSION = 1


def step_decay_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Return the learning rate of ``epoch`` (0-based): ``base_lr``, times 0.1 from
    epoch ``epochs / 3`` on, and times 0.01 from ``2 * epochs / 3`` on."""
    drops = int(epoch >= epochs / 3) + int(epoch >= 2 * epochs / 3)
    return base_lr * 0.1**drops


def evaluation_epochs(epochs: int, eval_every: int) -> list[int]:
    """Epochs after which the job evaluates: 0 (initialisation), every ``eval_every``, and the last."""
    points = set(range(0, epochs + 1, eval_every))
    points.add(epochs)
    return sorted(points)


def select_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class RunData:
    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    test_inputs: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def load_run_data(cfg: RunConfig, train_path: Path, test_path: Path, device: torch.device) -> RunData:
    """Load the prepared splits, take the preset's class-balanced subsets and move them to ``device``."""
    train = load_prepared(train_path)
    test = load_prepared(test_path)
    # The subset depends on the seed of the data only, not of the run, so that every
    # optimizer of a grid trains on the same images.
    train_x, train_y = normalised_inputs(train, balanced_subset(train["labels"], cfg.train_per_class, seed=0))
    test_x, test_y = normalised_inputs(test, balanced_subset(test["labels"], cfg.test_per_class, seed=1))
    return RunData(train_x.to(device), train_y.to(device), test_x.to(device), test_y.to(device), NUM_CLASSES[cfg.dataset])


def snapshot(model, data: RunData, batch_size: int) -> tuple[dict, dict]:
    """Evaluate the model: return a history row and the dump of what the metrics need."""
    result = evaluate(model, data.train_inputs, data.train_labels, data.test_inputs, data.test_labels, batch_size=max(batch_size, 500))
    weight = model.classifier.weight.detach().to("cpu", torch.float64)
    bias = model.classifier.bias.detach().to("cpu", torch.float64)
    metrics = compute_metrics(result.stats, weight, bias, test_features=result.test_features, test_labels=result.test_labels)
    spectra = compute_spectra(result.stats, weight)
    row = {
        "train_loss": result.train_loss,
        "train_accuracy": result.train_accuracy,
        "test_accuracy": result.test_accuracy,
        **metrics,
        "W_singular_values": [float(v) for v in spectra["W_singular_values"]],
        "M_singular_values": [float(v) for v in spectra["M_singular_values"]],
    }
    dump = {
        "stats": result.stats.state_dict(),
        "weight": weight,
        "bias": bias,
        "test_features": result.test_features,
        "test_labels": result.test_labels,
        "train_loss": result.train_loss,
        "train_accuracy": result.train_accuracy,
        "test_accuracy": result.test_accuracy,
    }
    return row, dump


def train_run(cfg: RunConfig, *, train_path: Path, test_path: Path, history_path: Path, dumps_path: Path, checkpoint_path: Path) -> pd.DataFrame:
    """Train one grid point and write its history (Parquet), metric dumps and final checkpoint."""
    device = select_device()
    torch.manual_seed(cfg.seed)
    data = load_run_data(cfg, train_path, test_path, device)
    model = build_model(
        cfg.architecture, num_classes=data.num_classes, input_shape=tuple(data.train_inputs.shape[1:]), width=cfg.width
    ).to(device)
    optimizer = create_optimizer(
        cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **cfg.optimizer_options
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    n_train = data.train_inputs.shape[0]
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    eval_points = set(evaluation_epochs(cfg.epochs, cfg.eval_every))
    log.info("start run=%s device=%s n_train=%d n_test=%d steps=%d", cfg.run_id, device, n_train, data.test_inputs.shape[0], steps_per_epoch * cfg.epochs)

    rows: list[dict] = []
    dumps: dict[str, dict] = {}
    row, dumps["initial"] = snapshot(model, data, cfg.batch_size)
    rows.append({"epoch": 0, "step": 0, "lr": cfg.lr, **row})
    diverged = False
    step = 0
    started = time.perf_counter()

    for epoch in range(cfg.epochs):
        # Set the learning rate of this epoch.
        lr = step_decay_lr(cfg.lr, epoch, cfg.epochs)
        set_learning_rate(optimizer, lr)

        # Forward and backward over a seeded permutation of the training set.
        model.train()
        order = torch.randperm(n_train, generator=generator).to(device)
        for start in range(0, n_train, cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            loss = F.cross_entropy(model(data.train_inputs[batch]), data.train_labels[batch])
            if not torch.isfinite(loss):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if not diverged and not parameters_finite(model):
            diverged = True
        if diverged:
            log.warning(
                "diverged run=%s epoch=%d step=%d loss=%s: non-finite loss or parameters, so the run stops and is marked diverged",
                cfg.run_id, epoch + 1, step, loss.item(),
            )
            break

        # Evaluate NC metrics and accuracies.
        # The last epoch is always an evaluation point, so its dump is the final one.
        if epoch + 1 in eval_points:
            row, dumps["final"] = snapshot(model, data, cfg.batch_size)
            rows.append({"epoch": epoch + 1, "step": step, "lr": lr, **row})
            log.info(
                "epoch=%d/%d step=%d lr=%.3g train_loss=%.4f train_acc=%.4f test_acc=%.4f NC0=%.4g NC1=%.4g NC3=%.4g elapsed_s=%.1f",
                epoch + 1, cfg.epochs, step, lr, row["train_loss"], row["train_accuracy"], row["test_accuracy"],
                row["NC0"], row["NC1"], row["NC3"], time.perf_counter() - started,
            )

    return finish_run(
        cfg, model, optimizer, rows, dumps, diverged, step, started,
        history_path=history_path, dumps_path=dumps_path, checkpoint_path=checkpoint_path,
    )


def set_learning_rate(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def parameters_finite(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def finish_run(cfg, model, optimizer, rows, dumps, diverged, step, started, *, history_path, dumps_path, checkpoint_path) -> pd.DataFrame:
    """Write a finished or diverged run's history, dumps and checkpoint, and return the history.

    A diverged run has no final snapshot, so its ``dumps["final"]`` is set to None.
    """
    if diverged:
        dumps["final"] = None
    history = pd.DataFrame(rows)
    history.insert(0, "run_id", cfg.run_id)
    history["diverged"] = diverged
    write_outputs(cfg, model, optimizer, history, dumps, diverged, step, history_path=history_path, dumps_path=dumps_path, checkpoint_path=checkpoint_path)
    log.info("done run=%s diverged=%s steps=%d elapsed_s=%.1f", cfg.run_id, diverged, step, time.perf_counter() - started)
    return history


def atomic_torch_save(payload, path: Path) -> None:
    """Write with torch.save to a temporary name, then rename, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def write_outputs(cfg, model, optimizer, history, dumps, diverged, step, *, history_path, dumps_path, checkpoint_path) -> None:
    history_path = Path(history_path)
    history_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = history_path.with_name(history_path.name + ".tmp")
    history.to_parquet(tmp, index=False)
    tmp.replace(history_path)
    meta = {"format_version": DUMP_FORMAT_VERSION, "config": cfg.to_dict(), "diverged": diverged, "steps": step}
    atomic_torch_save({**meta, **dumps}, Path(dumps_path))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({**meta, "model": state, "optimizer": optimizer.state_dict()}, Path(checkpoint_path))
