"""Tests of the ``metrics`` command and its file loading (pipeline.metrics_cli,
pipeline.feature_files): every input format, the output forms and each bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from pipeline.metrics import METRIC_NAMES
from pipeline.metrics_cli import metrics_command
from pipeline.stats import ClassStats
from tests.dense_reference import dense_metrics

REPO_ROOT = Path(__file__).resolve().parent.parent
NUM_CLASSES, DIM = 3, 5


def make_arrays(seed: int = 0, *, with_test: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(60) % NUM_CLASSES
    centres = 3.0 * rng.normal(size=(NUM_CLASSES, DIM))
    arrays = {
        "features": centres[labels] + rng.normal(size=(60, DIM)),
        "labels": labels,
        "weights": rng.normal(size=(NUM_CLASSES, DIM)),
        "bias": rng.normal(size=NUM_CLASSES),
    }
    if with_test:
        arrays["test_features"] = centres[np.arange(20) % NUM_CLASSES] + rng.normal(size=(20, DIM))
        arrays["test_labels"] = np.arange(20) % NUM_CLASSES
    return arrays


def run_metrics(*args: str):
    return CliRunner().invoke(metrics_command, [str(arg) for arg in args])


def json_output(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_rejected(result, *words: str) -> str:
    """Assert a non-zero exit with a one-line error that contains each of ``words``."""
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    message = result.stderr.strip()
    assert "Traceback" not in result.output
    assert len(message.splitlines()) == 1, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


@pytest.fixture
def npz_file(tmp_path) -> Path:
    path = tmp_path / "features.npz"
    np.savez(path, **make_arrays())
    return path


# -- accepted inputs -----------------------------------------------------------------


def test_cli_npz_json_matches_dense_reference(npz_file):
    arrays = make_arrays()
    output = json_output(run_metrics(npz_file, "--json"))
    reference = dense_metrics(arrays["features"], arrays["labels"], arrays["weights"], arrays["test_features"])

    assert tuple(output) == METRIC_NAMES
    for name in METRIC_NAMES:
        assert output[name] == pytest.approx(reference[name], rel=1e-9, abs=1e-12), name


def test_cli_without_test_arrays_omits_nc4(tmp_path):
    path = tmp_path / "train_only.npz"
    np.savez(path, **make_arrays(with_test=False))
    output = json_output(run_metrics(path, "--json"))
    assert "NC4" not in output
    assert len(output) == len(METRIC_NAMES) - 1


def test_cli_table_is_aligned(npz_file):
    result = run_metrics(npz_file)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert [line.split()[0] for line in lines[1:]] == list(METRIC_NAMES)
    value_columns = {line.index(line.split()[1]) for line in lines}
    assert len(value_columns) == 1


def test_cli_pt_matches_npz(tmp_path, npz_file):
    path = tmp_path / "features.pt"
    torch.save({name: torch.from_numpy(array) for name, array in make_arrays().items()}, path)
    assert json_output(run_metrics(path, "--json")) == json_output(run_metrics(npz_file, "--json"))


def test_cli_pt_half_precision_tensors(tmp_path):
    arrays = make_arrays()
    path = tmp_path / "half.pt"
    content = {name: torch.from_numpy(array) for name, array in arrays.items()}
    content["features"] = content["features"].to(torch.bfloat16)
    torch.save(content, path)
    output = json_output(run_metrics(path, "--json"))
    assert math.isfinite(output["NC1"])


def test_cli_pt_stats_dump_matches_features(tmp_path, npz_file):
    arrays = make_arrays()
    stats = ClassStats.from_features(torch.from_numpy(arrays["features"]), torch.from_numpy(arrays["labels"]), NUM_CLASSES)
    path = tmp_path / "dump.pt"
    torch.save(
        {
            "stats": stats.state_dict(),
            "weight": torch.from_numpy(arrays["weights"]),
            "bias": torch.from_numpy(arrays["bias"]),
            "test_features": torch.from_numpy(arrays["test_features"]).float(),
            "test_labels": torch.from_numpy(arrays["test_labels"]),
        },
        path,
    )
    from_dump = json_output(run_metrics(path, "--json"))
    from_features = json_output(run_metrics(npz_file, "--json"))
    for name in METRIC_NAMES:
        assert from_dump[name] == pytest.approx(from_features[name], rel=1e-6, abs=1e-12), name


def write_parquet(path: Path, features: np.ndarray, labels: np.ndarray, split: list[str] | None = None) -> None:
    table = pd.DataFrame({f"f{i}": features[:, i] for i in range(features.shape[1])})
    table.insert(0, "label", labels)
    if split is not None:
        table["split"] = split
    table.to_parquet(path)


def test_cli_parquet_with_weights_npy(tmp_path, npz_file):
    arrays = make_arrays()
    features = np.concatenate([arrays["features"], arrays["test_features"]])
    labels = np.concatenate([arrays["labels"], arrays["test_labels"]])
    split = ["train"] * 60 + ["test"] * 20
    write_parquet(tmp_path / "features.parquet", features, labels, split)
    np.save(tmp_path / "weights.npy", arrays["weights"])

    output = json_output(run_metrics(tmp_path / "features.parquet", "--weights", tmp_path / "weights.npy", "--json"))
    assert output == pytest.approx(json_output(run_metrics(npz_file, "--json")), rel=1e-12)


def test_cli_parquet_without_split_and_weights_pt(tmp_path):
    arrays = make_arrays(with_test=False)
    write_parquet(tmp_path / "train.parquet", arrays["features"], arrays["labels"])
    torch.save({"weights": torch.from_numpy(arrays["weights"])}, tmp_path / "weights.pt")
    output = json_output(run_metrics(tmp_path / "train.parquet", "--weights", tmp_path / "weights.pt", "--json"))
    assert "NC4" not in output
    assert math.isfinite(output["NC3"])


def test_cli_weights_option_replaces_file_weights(tmp_path, npz_file):
    other = np.random.default_rng(9).normal(size=(NUM_CLASSES, DIM))
    np.savez(tmp_path / "other.npz", weights=other)
    output = json_output(run_metrics(npz_file, "--weights", tmp_path / "other.npz", "--json"))
    assert output["W_norm"] == pytest.approx(np.linalg.norm(other), rel=1e-12)


def test_cli_empty_class_prints_null_and_warns(tmp_path):
    arrays = make_arrays()
    keep = arrays["labels"] != 1
    arrays["features"], arrays["labels"] = arrays["features"][keep], arrays["labels"][keep]
    np.savez(tmp_path / "empty_class.npz", **arrays)
    result = run_metrics(tmp_path / "empty_class.npz", "--json")
    output = json_output(result)
    assert output["NC1"] is None
    assert output["NC3"] is None
    assert output["NC0"] is not None
    assert "NaN" not in result.stdout


def test_cli_help_documents_parquet_layout():
    result = run_metrics("--help")
    assert result.exit_code == 0
    assert "'label'" in result.stdout
    assert "f0 .. f{p-1}" in result.stdout
    assert "--weights" in result.stdout


# -- rejected inputs -----------------------------------------------------------------


@pytest.mark.parametrize("missing", ["features", "labels", "weights"])
def test_cli_rejects_missing_array(tmp_path, missing):
    arrays = make_arrays()
    del arrays[missing]
    np.savez(tmp_path / "partial.npz", **arrays)
    assert_rejected(run_metrics(tmp_path / "partial.npz", "--json"), f"array '{missing}' is missing", "partial.npz")


def test_cli_rejects_mismatched_feature_columns(tmp_path):
    arrays = make_arrays()
    arrays["weights"] = arrays["weights"][:, :4]
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_rejected(run_metrics(tmp_path / "bad.npz"), "array 'features'", "5 columns", "p = 4", "(K, p)")


def test_cli_rejects_mismatched_label_count(tmp_path):
    arrays = make_arrays()
    arrays["labels"] = arrays["labels"][:-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_rejected(run_metrics(tmp_path / "bad.npz"), "array 'labels'", "(59,)", "expected (60,)", "one label per")


def test_cli_rejects_mismatched_test_features(tmp_path):
    arrays = make_arrays()
    arrays["test_features"] = arrays["test_features"][:, :2]
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_rejected(run_metrics(tmp_path / "bad.npz"), "array 'test_features'", "2 columns", "p = 5")


def test_cli_rejects_mismatched_bias(tmp_path):
    arrays = make_arrays()
    arrays["bias"] = np.zeros(4)
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_rejected(run_metrics(tmp_path / "bad.npz"), "array 'bias'", "(4,)", "expected (3,)")


@pytest.mark.parametrize(("name", "value"), [("labels", 3), ("labels", -1), ("test_labels", 7)])
def test_cli_rejects_labels_out_of_range(tmp_path, name, value):
    arrays = make_arrays()
    arrays[name][4] = value
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_rejected(run_metrics(tmp_path / "bad.npz"), f"array '{name}'", "outside 0..2", "K = 3 from weights.shape[0]", "relabel")


def test_cli_rejects_float_labels(tmp_path):
    arrays = make_arrays()
    arrays["labels"] = arrays["labels"].astype(np.float64)
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_rejected(run_metrics(tmp_path / "bad.npz"), "array 'labels'", "float64", "integer class indices")


@pytest.mark.parametrize(("name", "value"), [("features", np.nan), ("weights", np.inf), ("test_features", -np.inf)])
def test_cli_rejects_non_finite_values(tmp_path, name, value):
    arrays = make_arrays()
    arrays[name][1, 2] = value
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_rejected(run_metrics(tmp_path / "bad.npz"), f"array '{name}'", "1 NaN or infinite values", "(1, 2)", "drop or repair")


def test_cli_rejects_single_class_weights(tmp_path):
    arrays = make_arrays()
    arrays["weights"] = arrays["weights"][:1]
    arrays["labels"] = np.zeros(60, dtype=np.int64)
    del arrays["bias"], arrays["test_labels"]
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_rejected(run_metrics(tmp_path / "bad.npz"), "array 'weights'", "K = 1", "K >= 2")


def truncate(path: Path) -> Path:
    content = path.read_bytes()
    truncated = path.with_name("truncated" + path.suffix)
    truncated.write_bytes(content[: len(content) // 2])
    return truncated


def test_cli_rejects_truncated_npz(npz_file):
    assert_rejected(run_metrics(truncate(npz_file)), "cannot read", "truncated.npz", ".npz archive", "complete")


def test_cli_rejects_truncated_pt(tmp_path):
    path = tmp_path / "features.pt"
    torch.save({name: torch.from_numpy(array) for name, array in make_arrays().items()}, path)
    assert_rejected(run_metrics(truncate(path)), "cannot read", "truncated.pt", "torch.load", "complete")


def test_cli_rejects_truncated_parquet(tmp_path):
    arrays = make_arrays()
    write_parquet(tmp_path / "features.parquet", arrays["features"], arrays["labels"])
    np.save(tmp_path / "weights.npy", arrays["weights"])
    result = run_metrics(truncate(tmp_path / "features.parquet"), "--weights", tmp_path / "weights.npy")
    assert_rejected(result, "cannot read", "truncated.parquet", "Parquet", "complete")


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".parquet"])
def test_cli_rejects_unreadable_file(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_text("this is not a feature file\n")
    weights = tmp_path / "weights.npy"
    np.save(weights, np.ones((NUM_CLASSES, DIM)))
    assert_rejected(run_metrics(path, "--weights", weights), "cannot read", f"garbage{suffix}")


def test_cli_rejects_pickled_npz(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, features=np.array([{"a": 1}], dtype=object), labels=np.zeros(1, dtype=np.int64))
    assert_rejected(run_metrics(path), "cannot read", "object arrays")


def test_cli_rejects_unknown_extension(tmp_path):
    path = tmp_path / "features.csv"
    path.write_text("label,f0\n0,1.0\n")
    assert_rejected(run_metrics(path), "unsupported file extension '.csv'", ".npz, .pt, .parquet")


def test_cli_rejects_missing_file(tmp_path):
    result = run_metrics(tmp_path / "absent.npz")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_cli_rejects_parquet_without_weights(tmp_path):
    arrays = make_arrays()
    write_parquet(tmp_path / "features.parquet", arrays["features"], arrays["labels"])
    assert_rejected(run_metrics(tmp_path / "features.parquet"), "Parquet feature table", "--weights")


def test_cli_rejects_parquet_missing_label_column(tmp_path):
    table = pd.DataFrame({"f0": [1.0, 2.0], "f1": [0.0, 1.0]})
    table.to_parquet(tmp_path / "nolabel.parquet")
    np.save(tmp_path / "weights.npy", np.ones((2, 2)))
    result = run_metrics(tmp_path / "nolabel.parquet", "--weights", tmp_path / "weights.npy")
    assert_rejected(result, "column 'label' is missing", "f0..f{p-1}")


def test_cli_rejects_parquet_gap_in_feature_columns(tmp_path):
    table = pd.DataFrame({"label": [0, 1], "f0": [1.0, 2.0], "f2": [0.0, 1.0]})
    table.to_parquet(tmp_path / "gap.parquet")
    np.save(tmp_path / "weights.npy", np.ones((2, 2)))
    assert_rejected(run_metrics(tmp_path / "gap.parquet", "--weights", tmp_path / "weights.npy"), "skip f1")


def test_cli_rejects_parquet_unknown_split(tmp_path):
    arrays = make_arrays()
    write_parquet(tmp_path / "split.parquet", arrays["features"], arrays["labels"], ["train"] * 59 + ["valid"])
    np.save(tmp_path / "weights.npy", arrays["weights"])
    result = run_metrics(tmp_path / "split.parquet", "--weights", tmp_path / "weights.npy")
    assert_rejected(result, "column 'split'", "'valid'", "'train' or 'test'")


def test_cli_rejects_single_tensor_pt(tmp_path):
    torch.save(torch.ones(4, 5), tmp_path / "tensor.pt")
    assert_rejected(run_metrics(tmp_path / "tensor.pt"), "contains a single tensor", "save a dict")


def test_cli_accepts_bare_tensor_weights_pt(tmp_path, npz_file):
    weights = torch.from_numpy(make_arrays()["weights"])
    torch.save(weights, tmp_path / "weights.pt")
    output = json_output(run_metrics(npz_file, "--weights", tmp_path / "weights.pt", "--json"))
    assert output == json_output(run_metrics(npz_file, "--json"))


def test_cli_rejects_test_labels_without_features(tmp_path):
    arrays = make_arrays()
    del arrays["test_features"]
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_rejected(run_metrics(tmp_path / "bad.npz"), "array 'test_labels'", "no 'test_features'")


def test_cli_rejects_stats_dump_of_other_shape(tmp_path):
    stats = ClassStats.from_features(torch.randn(30, 4, dtype=torch.float64), torch.arange(30) % 3, 3)
    torch.save({"stats": stats.state_dict(), "weights": torch.ones(3, 5)}, tmp_path / "dump.pt")
    assert_rejected(run_metrics(tmp_path / "dump.pt"), "entry 'stats'", "(3, 4)", "expected (3, 5)")


# -- through the package entry point -------------------------------------------------


def main_group_has_metrics() -> bool:
    try:
        from pipeline.cli import main
    except ImportError:
        return False
    return "metrics" in getattr(main, "commands", {})


@pytest.mark.skipif(not main_group_has_metrics(), reason="pipeline.cli does not register the metrics command yet")
def test_cli_module_entry_point_prints_json(npz_file):
    completed = subprocess.run(
        [sys.executable, "-m", "pipeline", "metrics", str(npz_file), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert tuple(json.loads(completed.stdout)) == METRIC_NAMES
