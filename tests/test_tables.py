import json
import math

import pandas as pd
import pytest

from pipeline.tables import best_run_table, build_runs_table, central_claim, fixed_setting_table, percent_of_initial


def fake_result(optimizer, weight_decay, nc0, lr=0.01, momentum=0.9, accuracy=1.0, diverged=False):
    config = {
        "dataset": "fashion_mnist", "architecture": "resnet9", "optimizer": optimizer, "lr": lr, "momentum": momentum,
        "weight_decay": weight_decay, "seed": 0, "width": 1.0, "epochs": 3, "batch_size": 128, "eval_every": 1,
        "train_per_class": None, "test_per_class": None, "valid_accuracy": 0.99, "optimizer_options": {},
    }
    final = {"NC0": nc0, "NC1": 0.1, "NC2": 0.2, "NC3": nc0 / 10, "train_accuracy": accuracy, "test_accuracy": 0.9, "train_loss": 0.01}
    initial = {"NC0": 2.0, "NC1": 1.0, "NC2": 1.0, "NC3": 1.4, "train_accuracy": 0.1, "test_accuracy": 0.1, "train_loss": 2.3}
    return {"config": config, "diverged": diverged, "steps": 10, "initial": initial, "final": final}


def write_results(tmp_path, results):
    paths = []
    for i, result in enumerate(results):
        path = tmp_path / "runs" / f"run{i}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(result))
        paths.append(path)
    return build_runs_table(paths)


def test_percent_of_initial():
    assert percent_of_initial(0.5, 2.0) == 25.0
    assert math.isnan(percent_of_initial(1.0, 0.0))


def test_runs_table_columns_and_validity(tmp_path):
    runs = write_results(tmp_path, [fake_result("sgd", 0.05, 1e-4), fake_result("adamw", 0.05, 5.0, accuracy=0.5)])
    for column in ("dataset", "architecture", "optimizer", "lr", "momentum", "weight_decay", "NC0", "NC3", "NC0_pct", "valid", "coupling"):
        assert column in runs.columns
    assert runs["run_id"].tolist() == ["run0", "run1"]
    assert runs["valid"].tolist() == [True, False]
    assert runs["NC0_pct"].tolist() == pytest.approx([5e-3, 250.0])
    assert runs["coupling"].tolist() == ["coupled", "decoupled"]


def test_central_claim_per_shared_nonzero_decay(tmp_path):
    runs = write_results(tmp_path, [
        fake_result("adam", 0.0, 1.0), fake_result("adamw", 0.0, 0.5),
        fake_result("adam", 0.05, 0.1), fake_result("adamw", 0.05, 3.0),
        fake_result("adam", 0.5, 2.0), fake_result("adamw", 0.5, 1.0),
        fake_result("adamw", 5.0, 9.0),
    ])
    claims = central_claim(runs)
    assert claims["weight_decay"].tolist() == [0.05, 0.5]
    assert claims["holds"].tolist() == [True, False]
    assert claims["ratio_decoupled_to_coupled"].iloc[0] == pytest.approx(30.0)


def test_invalid_runs_left_out_of_claim(tmp_path):
    runs = write_results(tmp_path, [
        fake_result("sgd", 0.05, 1e-3), fake_result("sgdw", 0.05, math.nan, diverged=True),
        fake_result("signum", 0.05, 1e-3, accuracy=0.5), fake_result("signumw", 0.05, 2.0),
    ])
    claims = central_claim(runs)
    assert claims["coupled"].tolist() == ["sgd", "signum"]
    assert claims["holds"].isna().all()
    assert claims["valid_runs_decoupled"].tolist() == [0, 1]
    assert claims["valid_runs_coupled"].tolist() == [1, 0]


def test_fixed_setting_and_best_tables(tmp_path):
    runs = write_results(tmp_path, [
        fake_result("sgd", 0.05, 1e-3, lr=0.01), fake_result("sgd", 0.05, 1e-5, lr=0.1), fake_result("sgd", 0.005, 1e-2, lr=0.01),
    ])
    fixed = fixed_setting_table(runs, {"lr": {"sgd": 0.01}})
    assert fixed["NC0"].tolist() == pytest.approx([1e-3])
    best = best_run_table(runs)
    assert best["lr"].tolist() == [0.1]
