"""Recompute a run's initial and final NC metrics from its training dumps, so that
a change to the metric code never requires training again."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from pipeline.metrics import METRIC_NAMES, compute_metrics
from pipeline.stats import ClassStats

log = logging.getLogger(__name__)


class DumpError(RuntimeError):
    """A training dump is missing, truncated or of an unknown format."""


def load_dumps(path: str | Path) -> dict:
    """Load a ``dumps.pt`` written by the training job (tensors only, ``weights_only=True``)."""
    path = Path(path)
    try:
        dumps = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise DumpError(f"missing training dump {path}: run the train rule for this run") from None
    except Exception as error:  # truncated zip archives and foreign files raise several types
        raise DumpError(f"corrupt training dump {path} ({type(error).__name__}); delete the run's folder and train it again") from error
    if not isinstance(dumps, dict) or "initial" not in dumps or "config" not in dumps:
        raise DumpError(f"invalid training dump {path}: expected keys 'config' and 'initial'; delete the run's folder and train it again")
    return dumps


def metrics_of_snapshot(snapshot: dict | None) -> dict[str, float]:
    """Return every scalar metric plus losses and accuracies of one dumped evaluation; NaN when absent."""
    if snapshot is None:
        return {name: math.nan for name in (*METRIC_NAMES, "train_loss", "train_accuracy", "test_accuracy")}
    stats = ClassStats.from_state_dict(snapshot["stats"])
    values = compute_metrics(
        stats, snapshot["weight"], snapshot["bias"], test_features=snapshot["test_features"], test_labels=snapshot["test_labels"]
    )
    for key in ("train_loss", "train_accuracy", "test_accuracy"):
        values[key] = float(snapshot[key])
    return values


def recompute_run_metrics(dumps_path: str | Path) -> dict:
    dumps = load_dumps(dumps_path)
    return {
        "config": dumps["config"],
        "diverged": bool(dumps.get("diverged", False)),
        "steps": int(dumps.get("steps", 0)),
        "initial": metrics_of_snapshot(dumps["initial"]),
        "final": metrics_of_snapshot(dumps.get("final")),
    }


def write_run_metrics(dumps_path: str | Path, out_path: str | Path) -> dict:
    """Recompute the metrics of ``dumps_path`` and write them as JSON to ``out_path``."""
    result = recompute_run_metrics(dumps_path)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # NaN is kept as JSON's non-standard NaN literal, which json and pandas read back.
    out_path.write_text(json.dumps(result, indent=2, sort_keys=True))
    log.info("metrics run=%s NC0=%.4g NC3=%.4g diverged=%s", dumps_path, result["final"]["NC0"], result["final"]["NC3"], result["diverged"])
    return result
