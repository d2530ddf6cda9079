"""The unconstrained feature model: training, outputs in the formats of the image runs,
config wiring, the AdamW ratio table, the report, and a Snakemake dry run."""

import json
import math

import pandas as pd
import pytest
import torch
import yaml

from pipeline.config import ConfigError, RunConfig, expand_grid, validate_params
from pipeline.figures import weight_decay_figure_metrics, write_report
from pipeline.run_metrics import write_run_metrics
from pipeline.tables import adamw_ratio_table, build_runs_table, write_aggregates
from pipeline.ufm import UnconstrainedFeatureModel, build_ufm, train_ufm_run, ufm_labels
from tests.conftest import REPO_ROOT
from tests.test_workflow import copy_repository, edit_params, planned_jobs

# Ten classes of 5 samples in 32 dimensions, so that a run of 300 steps takes under a second.
TINY_PER_CLASS = 5
TINY_WIDTH = 1 / 16


def tiny_ufm_config(**changes) -> RunConfig:
    values = dict(
        dataset="ufm", architecture="ufm", optimizer="adam", lr=0.1, momentum=0.9, weight_decay=1e-3, seed=0,
        width=TINY_WIDTH, epochs=30, batch_size=128, eval_every=10, train_per_class=TINY_PER_CLASS, test_per_class=None,
        valid_accuracy=1.0,
    )
    values.update(changes)
    return RunConfig(**values)


def run_tiny_ufm(out, **changes):
    cfg = tiny_ufm_config(**changes)
    history = train_ufm_run(cfg, history_path=out / "history.parquet", dumps_path=out / "dumps.pt", checkpoint_path=out / "checkpoint.pt")
    return cfg, history


def ufm_preset(**changes) -> dict:
    preset = {
        "description": "tiny UFM", "datasets": ["ufm"], "architectures": ["ufm"], "width": TINY_WIDTH,
        "train_per_class": TINY_PER_CLASS, "epochs": 20, "eval_every": 10, "valid_accuracy": 1.0,
        "optimizers": {
            "adam": {"lr": [0.1], "momentum": [0.9], "weight_decay": [1e-3]},
            "adamw": {"lr": [0.1], "momentum": [0.9], "weight_decay": [1e-3]},
        },
    }
    preset.update(changes)
    return preset


@pytest.fixture()
def params() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def test_ufm_sizes_follow_config():
    torch.manual_seed(0)
    model = build_ufm(tiny_ufm_config(width=0.25, train_per_class=3))
    assert tuple(model.features.shape) == (30, 128)
    assert tuple(model.classifier.weight.shape) == (10, 128)
    assert tuple(model().shape) == (30, 10)


def test_ufm_labels_balanced():
    labels = ufm_labels(50, 10)
    assert labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert torch.bincount(labels).tolist() == [5] * 10


def test_ufm_feature_init_scale():
    torch.manual_seed(0)
    model = UnconstrainedFeatureModel(1000, 512, 10)
    assert model.features.std().item() == pytest.approx(1 / math.sqrt(512), rel=0.01)


def test_ufm_rejects_invalid_size():
    with pytest.raises(ValueError, match="invalid UFM size: num_samples=5, dim=8, num_classes=10"):
        UnconstrainedFeatureModel(5, 8, 10)


def test_tiny_ufm_reaches_full_accuracy(tmp_path):
    _, history = run_tiny_ufm(tmp_path, epochs=100, eval_every=50)
    assert history["train_accuracy"].iloc[0] < 1.0
    assert history["train_accuracy"].iloc[-1] == 1.0
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def test_ufm_run_history_and_checkpoint(tmp_path):
    cfg, history = run_tiny_ufm(tmp_path)
    stored = pd.read_parquet(tmp_path / "history.parquet")
    assert stored["epoch"].tolist() == [0, 10, 20, 30]
    assert stored["step"].tolist() == [0, 10, 20, 30]
    assert stored["lr"].tolist() == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert stored["test_accuracy"].isna().all()
    assert "NC4" not in stored.columns
    for column in ("NC0", "NC1", "NC2", "NC3", "train_loss", "train_accuracy", "W_singular_values", "M_singular_values"):
        assert column in stored.columns
    assert not stored["diverged"].any()
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["config"] == cfg.to_dict()
    assert tuple(checkpoint["model"]["features"].shape) == (50, 32)
    assert "classifier.weight" in checkpoint["model"]


def test_ufm_recomputed_metrics_match_history(tmp_path):
    _, history = run_tiny_ufm(tmp_path)
    result = write_run_metrics(tmp_path / "dumps.pt", tmp_path / "metrics.json")
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 30
    assert "NC4" not in result["final"]
    assert math.isnan(result["final"]["test_accuracy"])
    for name in ("NC0", "NC1", "NC2", "NC3", "alpha", "train_loss", "train_accuracy"):
        assert result["initial"][name] == pytest.approx(history[name].iloc[0], rel=1e-9)
        assert result["final"][name] == pytest.approx(history[name].iloc[-1], rel=1e-9)


def test_ufm_same_seed_same_history(tmp_path):
    _, first = run_tiny_ufm(tmp_path / "a", epochs=5, eval_every=5)
    _, second = run_tiny_ufm(tmp_path / "b", epochs=5, eval_every=5)
    pd.testing.assert_frame_equal(first, second)


def test_ufm_divergent_run_marked_not_raised(tmp_path):
    _, history = run_tiny_ufm(tmp_path, optimizer="sgd", lr=1e38, momentum=0.0, weight_decay=0.0)
    assert history["diverged"].all()
    result = write_run_metrics(tmp_path / "dumps.pt", tmp_path / "metrics.json")
    assert result["diverged"] is True
    assert math.isnan(result["final"]["NC0"])
    assert math.isfinite(result["initial"]["NC0"])


def test_ufm_rejects_image_config(tmp_path):
    with pytest.raises(ValueError, match="invalid run for train_ufm_run: expected architecture and dataset 'ufm', got 'resnet9' and 'ufm'"):
        run_tiny_ufm(tmp_path, architecture="resnet9")


def test_adamw_nc0_above_adam_at_tiny_scale(tmp_path):
    finals = {}
    for optimizer in ("adam", "adamw"):
        _, history = run_tiny_ufm(tmp_path / optimizer, optimizer=optimizer, epochs=300, eval_every=300)
        assert history["train_accuracy"].iloc[-1] == 1.0
        finals[optimizer] = history["NC0"].iloc[-1]
    # Measured at seeds 0, 1 and 2: AdamW's NC0 about 0.2, Adam's about 0.001.
    assert finals["adamw"] > 10 * finals["adam"]


def test_ufm_preset_expands(params):
    params["presets"]["tiny_ufm"] = ufm_preset()
    runs = expand_grid(validate_params(params), "tiny_ufm")
    assert sorted(runs) == ["ufm/ufm/adam/lr0.1-mom0.9-wd0.001-seed0", "ufm/ufm/adamw/lr0.1-mom0.9-wd0.001-seed0"]
    assert all(run.valid_accuracy == 1.0 and run.train_per_class == TINY_PER_CLASS for run in runs.values())


@pytest.mark.parametrize(
    ("datasets", "architectures", "message"),
    [
        (["fashion_mnist"], ["ufm"], r"invalid pair of dataset 'fashion_mnist' and architecture 'ufm' in preset 'tiny_ufm'.*datasets: \[ufm\]"),
        (["ufm"], ["resnet9"], r"invalid pair of dataset 'ufm' and architecture 'resnet9' in preset 'tiny_ufm'.*architectures: \[ufm\]"),
        (["ufm", "mnist"], ["ufm"], r"invalid pair of dataset 'mnist' and architecture 'ufm'"),
    ],
)
def test_ufm_mixed_with_real_data_rejected(params, datasets, architectures, message):
    params["presets"]["tiny_ufm"] = ufm_preset(datasets=datasets, architectures=architectures)
    with pytest.raises(ConfigError, match=message):
        validate_params(params)


def test_ufm_listed_in_unknown_name_error(params):
    params["presets"]["tiny_ufm"] = ufm_preset(architectures=["ufn"])
    with pytest.raises(ConfigError, match=r"unknown architecture 'ufn'.*mlp, ufm"):
        validate_params(params)


def fake_ufm_result(optimizer, weight_decay, nc0, nc3, lr=0.1, accuracy=1.0):
    config = tiny_ufm_config(optimizer=optimizer, weight_decay=weight_decay, lr=lr).to_dict()
    final = {"NC0": nc0, "NC1": 0.1, "NC2": 0.2, "NC3": nc3, "train_accuracy": accuracy, "test_accuracy": math.nan, "train_loss": 0.01}
    initial = {"NC0": 0.004, "NC1": 1.0, "NC2": 1.0, "NC3": 1.4, "train_accuracy": 0.1, "test_accuracy": math.nan, "train_loss": 2.3}
    return {"config": config, "diverged": False, "steps": 30, "initial": initial, "final": final}


def fake_runs_table(tmp_path, results):
    paths = []
    for i, result in enumerate(results):
        path = tmp_path / "runs" / f"run{i}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(result))
        paths.append(path)
    return build_runs_table(paths)


def test_adamw_ratio_table_means_valid_runs(tmp_path):
    runs = fake_runs_table(tmp_path, [
        fake_ufm_result("adamw", 1e-3, 0.2, 0.9, lr=0.1), fake_ufm_result("adamw", 1e-3, 0.4, 0.7, lr=0.3),
        fake_ufm_result("adam", 1e-3, 1e-4, 1e-3, lr=0.1), fake_ufm_result("adam", 1e-3, 3e-4, 1e-2, lr=0.3),
        fake_ufm_result("adam", 1e-3, 5.0, 5.0, lr=1.0, accuracy=0.9),
        fake_ufm_result("sgd", 1e-3, 0.1, 0.1), fake_ufm_result("sgd", 0.05, 1e-5, 1e-5, accuracy=0.5),
        fake_ufm_result("adamw", 0.05, 1.0, 1.0), fake_ufm_result("adamw", 0.0, 1.0, 1.0), fake_ufm_result("adam", 0.0, 1e-6, 1e-6),
    ])
    ratios = adamw_ratio_table(runs)
    assert list(zip(ratios["reference"], ratios["weight_decay"])) == [("adam", 1e-3), ("sgd", 1e-3), ("sgd", 0.05)]
    adam = ratios.iloc[0]
    assert adam["valid_runs_adamw"] == 2
    assert adam["valid_runs_reference"] == 2
    assert adam["NC0_ratio"] == pytest.approx(0.3 / 2e-4)
    assert adam["NC0_ratio_min"] == pytest.approx(0.2 / 3e-4)
    assert adam["NC3_ratio"] == pytest.approx(0.8 / 5.5e-3)
    assert adam["holds"] == True  # noqa: E712 (numpy bool)
    assert ratios.iloc[1]["holds"] == False  # noqa: E712 (NC0 ratio 3)
    assert ratios.iloc[2]["holds"] is None
    assert math.isnan(ratios.iloc[2]["NC0_ratio"])


def test_adamw_ratio_table_empty_without_adamw(tmp_path):
    runs = fake_runs_table(tmp_path, [fake_ufm_result("adam", 1e-3, 1e-4, 1e-3)])
    ratios = adamw_ratio_table(runs)
    assert ratios.empty
    assert "NC0_ratio" in ratios.columns


def test_ufm_report_without_test_set(tmp_path):
    metrics_paths, history_paths = [], []
    for optimizer in ("adam", "adamw", "sgd"):
        # Aggregation reads each run's id from its folder, as under results/<preset>/runs/.
        changes = dict(optimizer=optimizer, lr=1.0 if optimizer == "sgd" else 0.1, epochs=20, eval_every=10)
        out = tmp_path / "runs" / tiny_ufm_config(**changes).run_id
        run_tiny_ufm(out, **changes)
        write_run_metrics(out / "dumps.pt", out / "metrics.json")
        metrics_paths.append(out / "metrics.json")
        history_paths.append(out / "history.parquet")
    runs, _ = write_aggregates(metrics_paths, history_paths, runs_path=tmp_path / "runs.parquet", history_path=tmp_path / "history.parquet")
    assert "NC4" not in runs.columns
    assert runs["test_accuracy"].isna().all()
    assert weight_decay_figure_metrics(runs) == ("NC0", "NC3", "NC1", "NC2")

    names = ["table_md", "table_csv", "claims", "claims_summary", "adamw_ratios", "figure_png", "figure_html", "dynamics_png", "dynamics_html"]
    suffixes = [".md", ".csv", ".csv", ".json", ".csv", ".png", ".html", ".png", ".html"]
    outputs = {name: tmp_path / "figures" / f"{name}{suffix}" for name, suffix in zip(names, suffixes)}
    write_report(tmp_path / "runs.parquet", {**outputs, "history": tmp_path / "history.parquet"})
    assert "| adamw |" in outputs["table_md"].read_text().replace("  ", " ")
    ratios = pd.read_csv(outputs["adamw_ratios"])
    assert sorted(ratios["reference"]) == ["adam", "sgd"]
    assert "NC1" in outputs["figure_html"].read_text()
    assert outputs["figure_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ufm_dry_run_skips_prepare_data(tmp_path):
    repo = copy_repository(tmp_path)

    def add_preset_without_data(params):
        params["presets"]["tiny_ufm"] = ufm_preset()
        params["data"].update(fashion_mnist_dir="/nonexistent", download=False)

    edit_params(repo, add_preset_without_data)
    jobs = planned_jobs(repo, "--config", "preset=tiny_ufm")
    assert jobs.get("train") == 2
    assert jobs.get("metrics") == 2
    assert "prepare_data" not in jobs
