"""Aggregation of a preset's runs into Parquet tables, the Table 2 / Table 3
summaries of final NC metrics per optimizer, and the coupled-vs-decoupled NC0 check."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from pipeline.metrics import METRIC_NAMES
from pipeline.optimizers import COUPLING, PAPER_PAIRS

log = logging.getLogger(__name__)

HYPERPARAMETERS = ("dataset", "architecture", "optimizer", "lr", "momentum", "weight_decay", "seed")
SUMMARY_METRICS = ("NC0", "NC1", "NC2", "NC3")


def percent_of_initial(final: float, initial: float) -> float:
    """Return ``100 * final / initial``; NaN when the initial value is 0 or missing."""
    if initial is None or not math.isfinite(initial) or initial == 0:
        return math.nan
    return 100.0 * final / initial


def run_row(result: dict) -> dict:
    """Flatten one ``metrics.json`` into a row: hyperparameters, final metrics, initial values and percentages."""
    config = dict(result["config"])
    options = config.pop("optimizer_options", {}) or {}
    row: dict = {"run_id": None, **config, "optimizer_options": json.dumps(options, sort_keys=True)}
    row["coupling"] = COUPLING.get(config["optimizer"], "unknown")
    row["diverged"] = bool(result["diverged"])
    row["steps"] = int(result.get("steps", 0))
    final, initial = result["final"], result["initial"]
    for name, value in final.items():
        row[name] = value
        row[f"{name}_initial"] = initial.get(name, math.nan)
        row[f"{name}_pct"] = percent_of_initial(value, initial.get(name, math.nan))
    accuracy = final.get("train_accuracy", math.nan)
    row["valid"] = (not row["diverged"]) and math.isfinite(accuracy) and accuracy >= config.get("valid_accuracy", 0.99)
    return row


def build_runs_table(metrics_paths: Iterable[str | Path]) -> pd.DataFrame:
    rows = []
    for path in metrics_paths:
        path = Path(path)
        row = run_row(json.loads(path.read_text()))
        row["run_id"] = path.parent.as_posix().split("/runs/", 1)[-1]
        rows.append(row)
    table = pd.DataFrame(rows)
    leading = ["run_id", *HYPERPARAMETERS, "coupling", "valid", "diverged", *METRIC_NAMES, "train_accuracy", "test_accuracy", "train_loss"]
    leading = [c for c in leading if c in table.columns]
    return table[leading + [c for c in table.columns if c not in leading]]


def write_aggregates(metrics_paths, history_paths, *, runs_path, history_path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``runs.parquet`` (a row per run) and ``history.parquet`` (a row per evaluation)."""
    runs = build_runs_table(metrics_paths)
    history = pd.concat([pd.read_parquet(p) for p in history_paths], ignore_index=True)
    # The history's ``lr`` is the scheduled learning rate, so the run's base rate joins as ``base_lr``.
    hyper = runs[["run_id", *HYPERPARAMETERS, "coupling"]].rename(columns={"lr": "base_lr"})
    history = history.merge(hyper, on="run_id", how="left")
    for path, frame in ((runs_path, runs), (history_path, history)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
    log.info("aggregated runs=%d valid=%d diverged=%d path=%s", len(runs), int(runs["valid"].sum()), int(runs["diverged"].sum()), runs_path)
    return runs, history


# ------------------------------------------------------------------ summaries


def default_setting(runs: pd.DataFrame, setting: dict) -> dict:
    """Complete the fixed setting of Table 2: a learning rate per optimizer, a momentum and a weight decay.

    Missing keys pick, in turn: the median learning rate of each optimizer's grid, momentum
    0.9 when present (else the median), and the largest non-zero weight decay shared by all optimizers.
    """
    lr = dict(setting.get("lr", {}))
    for optimizer, group in runs.groupby("optimizer"):
        values = sorted(group["lr"].unique())
        lr.setdefault(optimizer, values[len(values) // 2])
    momenta = sorted(runs["momentum"].unique())
    momentum = setting.get("momentum", 0.9 if 0.9 in momenta else momenta[len(momenta) // 2])
    shared = set.intersection(*(set(g["weight_decay"]) for _, g in runs.groupby("optimizer")))
    nonzero = sorted(v for v in shared if v > 0)
    weight_decay = setting.get("weight_decay", nonzero[-1] if nonzero else max(shared, default=0.0))
    return {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}


def format_cell(value: float, pct: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    text = f"{value:.3g}"
    if math.isfinite(pct):
        text += f" ({pct - 100:+.1f}%)"
    return text


def summary_rows(selected: pd.DataFrame) -> pd.DataFrame:
    """Average the selected runs per dataset, architecture and optimizer."""
    columns = [c for m in SUMMARY_METRICS for c in (m, f"{m}_pct")]
    grouped = selected.groupby(["dataset", "architecture", "optimizer"], sort=False)
    table = grouped[columns + ["train_accuracy", "test_accuracy"]].mean()
    table["runs"] = grouped.size()
    return table.reset_index()


def fixed_setting_table(runs: pd.DataFrame, setting: dict) -> pd.DataFrame:
    """Table 2: final metrics per optimizer at one fixed setting (mean over seeds)."""
    chosen = default_setting(runs, setting)
    mask = (
        runs["optimizer"].map(chosen["lr"]).eq(runs["lr"])
        & np.isclose(runs["momentum"], chosen["momentum"])
        & np.isclose(runs["weight_decay"], chosen["weight_decay"])
        & ~runs["diverged"]
    )
    table = summary_rows(runs[mask])
    table.insert(3, "setting", f"momentum={chosen['momentum']:g}, weight_decay={chosen['weight_decay']:g}")
    table.insert(4, "lr", table["optimizer"].map(chosen["lr"]))
    return table


def best_run_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 3: per optimizer, the valid run with the smallest final NC3."""
    valid = runs[runs["valid"] & runs["NC3"].notna()]
    if valid.empty:
        return pd.DataFrame(columns=["dataset", "architecture", "optimizer"])
    index = valid.groupby(["dataset", "architecture", "optimizer"], sort=False)["NC3"].idxmin()
    best = valid.loc[index]
    keep = ["dataset", "architecture", "optimizer", "lr", "momentum", "weight_decay", *[c for m in SUMMARY_METRICS for c in (m, f"{m}_pct")], "train_accuracy", "test_accuracy"]
    return best[keep].reset_index(drop=True)


def markdown_table(table: pd.DataFrame, keys: list[str]) -> str:
    header = keys + list(SUMMARY_METRICS) + ["train acc", "test acc"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [f"{row[k]:g}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        cells += [format_cell(row[m], row[f"{m}_pct"]) for m in SUMMARY_METRICS]
        cells += [f"{row['train_accuracy']:.3f}", f"{row['test_accuracy']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def central_claim(runs: pd.DataFrame) -> pd.DataFrame:
    """Compare final NC0 of each coupled/decoupled pair at every shared non-zero weight decay.

    Only valid runs (final train accuracy at least the preset's threshold) enter the
    comparison, as in the study's analysis. At each point the claim holds when the coupled
    optimizer's mean NC0 over learning rates, momenta and seeds is below the decoupled one's.
    A point where either optimizer has no valid run is listed with ``holds`` empty.
    """
    rows = []
    for (dataset, architecture), group in runs.groupby(["dataset", "architecture"]):
        for coupled, decoupled in PAPER_PAIRS:
            first, second = group[group["optimizer"] == coupled], group[group["optimizer"] == decoupled]
            for weight_decay in sorted(set(first["weight_decay"]) & set(second["weight_decay"])):
                if weight_decay == 0:
                    continue
                valid_first = first[(first["weight_decay"] == weight_decay) & first["valid"]]
                valid_second = second[(second["weight_decay"] == weight_decay) & second["valid"]]
                nc0_coupled = valid_first["NC0"].mean() if len(valid_first) else math.nan
                nc0_decoupled = valid_second["NC0"].mean() if len(valid_second) else math.nan
                compared = len(valid_first) > 0 and len(valid_second) > 0
                rows.append({
                    "dataset": dataset, "architecture": architecture, "coupled": coupled, "decoupled": decoupled,
                    "weight_decay": weight_decay, "NC0_coupled": nc0_coupled, "NC0_decoupled": nc0_decoupled,
                    "ratio_decoupled_to_coupled": nc0_decoupled / nc0_coupled if compared and nc0_coupled > 0 else math.nan,
                    "valid_runs_coupled": len(valid_first), "valid_runs_decoupled": len(valid_second),
                    "holds": bool(nc0_coupled < nc0_decoupled) if compared else None,
                })
    columns = [
        "dataset", "architecture", "coupled", "decoupled", "weight_decay", "NC0_coupled", "NC0_decoupled",
        "ratio_decoupled_to_coupled", "valid_runs_coupled", "valid_runs_decoupled", "holds",
    ]
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------- AdamW against coupled decay


ADAMW_RATIO_FACTOR = 10.0
"""Factor by which AdamW's final NC0 and NC3 exceed those of Adam and SGD in the study's UFM ablation."""


def adamw_ratio_table(runs: pd.DataFrame, references=("adam", "sgd"), metrics=("NC0", "NC3"), factor: float = ADAMW_RATIO_FACTOR) -> pd.DataFrame:
    """Divide AdamW's final NC0 and NC3 by those of Adam and of SGD at every shared non-zero weight decay.

    This is the check of the study's UFM ablation, where AdamW's NC0 and NC3 stay at least
    ``factor`` times those of Adam and SGD with momentum. Per dataset, architecture, reference
    optimizer and weight decay, each side's value is the mean over its valid runs (every
    learning rate, momentum and seed). ``<metric>_ratio_min`` divides AdamW's smallest valid
    value by the reference's largest, the least favourable pairing of learning rates.
    ``holds`` is true when every mean ratio is at least ``factor``, and empty at a point
    where either side has no valid run.
    """
    rows = []
    for (dataset, architecture), group in runs.groupby(["dataset", "architecture"]):
        decoupled = group[group["optimizer"] == "adamw"]
        for reference in references:
            coupled = group[group["optimizer"] == reference]
            for weight_decay in sorted(set(decoupled["weight_decay"]) & set(coupled["weight_decay"])):
                if weight_decay == 0:
                    continue
                valid_decoupled = decoupled[(decoupled["weight_decay"] == weight_decay) & decoupled["valid"]]
                valid_coupled = coupled[(coupled["weight_decay"] == weight_decay) & coupled["valid"]]
                compared = len(valid_decoupled) > 0 and len(valid_coupled) > 0
                row = {
                    "dataset": dataset, "architecture": architecture, "reference": reference, "weight_decay": weight_decay,
                    "valid_runs_adamw": len(valid_decoupled), "valid_runs_reference": len(valid_coupled),
                }
                for metric in metrics:
                    mean_decoupled = valid_decoupled[metric].mean() if compared else math.nan
                    mean_coupled = valid_coupled[metric].mean() if compared else math.nan
                    row[f"{metric}_adamw"] = mean_decoupled
                    row[f"{metric}_reference"] = mean_coupled
                    row[f"{metric}_ratio"] = mean_decoupled / mean_coupled if compared else math.nan
                    row[f"{metric}_ratio_min"] = valid_decoupled[metric].min() / valid_coupled[metric].max() if compared else math.nan
                row["holds"] = bool(all(row[f"{m}_ratio"] >= factor for m in metrics)) if compared else None
                rows.append(row)
    columns = ["dataset", "architecture", "reference", "weight_decay", "valid_runs_adamw", "valid_runs_reference"]
    columns += [f"{m}_{suffix}" for m in metrics for suffix in ("adamw", "reference", "ratio", "ratio_min")]
    return pd.DataFrame(rows, columns=[*columns, "holds"])
