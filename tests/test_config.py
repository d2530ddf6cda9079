from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, RunConfig, expand_grid, load_params, validate_params
from tests.conftest import REPO_ROOT


@pytest.fixture()
def params() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def test_paper_preset_has_3888_runs(params):
    runs = expand_grid(validate_params(params), "paper")
    assert len(runs) == 3888
    optimizers = {run.optimizer for run in runs.values()}
    assert optimizers == {"sgd", "sgdw", "adam", "adamw", "signum", "signumw"}


def test_paper_preset_grid_values(params):
    runs = expand_grid(validate_params(params), "paper").values()
    adamw = {r.weight_decay for r in runs if r.optimizer == "adamw"}
    sgd_lr = {r.lr for r in runs if r.optimizer == "sgd"}
    assert adamw == {0.0, 5e-4, 0.05, 0.5, 5.0, 10.0}
    assert sgd_lr == {0.001, 0.01, 0.0679}
    assert all(r.epochs == 200 and r.batch_size == 128 and r.width == 1.0 for r in runs)


def test_quick_preset_pairs_share_nonzero_decay(params):
    runs = expand_grid(validate_params(params), "quick").values()
    for coupled, decoupled in (("sgd", "sgdw"), ("adam", "adamw"), ("signum", "signumw")):
        a = {r.weight_decay for r in runs if r.optimizer == coupled}
        b = {r.weight_decay for r in runs if r.optimizer == decoupled}
        assert {wd for wd in a & b if wd > 0}, (coupled, decoupled)


def test_run_ids_unique_and_readable(params):
    runs = expand_grid(validate_params(params), "paper")
    run = runs["cifar10/vgg9/adamw/lr0.005-mom0.98-wd10-seed0"]
    assert run.weight_decay == 10.0
    assert run.momentum == 0.98


def test_run_config_round_trip():
    run = RunConfig("mnist", "mlp", "adammix", 0.01, 0.9, 5e-4, 0, 1.0, 3, 64, 1, None, None, 0.99, {"coupled_weight_decay": 1e-4})
    assert RunConfig.from_dict(run.to_dict()) == run
    assert run.run_id.endswith("-coupled_weight_decay0.0001")


def test_unknown_preset_names_choices(params):
    params["preset"] = "qiuck"
    with pytest.raises(ConfigError, match=r"unknown preset 'qiuck'.*--config preset=NAME"):
        validate_params(params)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("datasets", ["fashionmnist"], r"unknown dataset 'fashionmnist'.*fashion_mnist"),
        ("architectures", ["resnet18"], r"unknown architecture 'resnet18'.*resnet9"),
        ("optimizers", {"adamax": {"lr": [0.1], "momentum": [0.9], "weight_decay": [0.0]}}, r"unknown optimizer 'adamax'.*sgdw"),
        ("optimizers", {"sgd": {"lr": [0.1], "momentum": [1.0], "weight_decay": [0.0]}}, r"invalid momentum 1.0 for sgd"),
        ("epochs", "ten", r"at presets.quick.epochs: 'ten' is not of type 'integer'"),
    ],
)
def test_invalid_preset_value_rejected(params, key, value, message):
    params["presets"]["quick"][key] = value
    with pytest.raises(ConfigError, match=message):
        validate_params(params)


def test_negative_learning_rate_rejected(params):
    params["presets"]["quick"]["optimizers"]["sgd"]["lr"] = [-0.1]
    with pytest.raises(ConfigError, match=r"presets.quick.optimizers.sgd.lr.0: -0.1 is less than the minimum"):
        validate_params(params)


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("preset: quick\npresets:\n  quick: [unclosed\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in .*params.yaml line \d+"):
        load_params(path)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="missing parameter file"):
        load_params(tmp_path / "nope.yaml")


def test_preset_override(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO_ROOT / "params.yaml").read_text())
    params = load_params(path, preset="smoke")
    assert params["preset"] == "smoke"
    assert Path(params["data"]["root"]) == Path("data")


def test_list_options_expand_into_runs(params):
    params["presets"]["smoke"]["optimizers"] = {
        "adammix": {"lr": [0.01], "momentum": [0.9], "weight_decay": [5e-4], "options": {"coupled_weight_decay": [0.0, 2.5e-4, 5e-4]}}
    }
    runs = expand_grid(validate_params(params), "smoke")
    shares = [run.optimizer_options["coupled_weight_decay"] for run in runs.values()]
    assert shares == [0.0, 2.5e-4, 5e-4]


def test_optimizer_rejects_settings_before_jobs(params):
    params["presets"]["smoke"]["optimizers"] = {
        "adammix": {"lr": [0.01], "momentum": [0.9], "weight_decay": [5e-4], "options": {"coupled_weight_decay": 1e-3}}
    }
    with pytest.raises(ConfigError, match=r"invalid settings for adammix in preset 'smoke'.*coupled_weight_decay=0.001"):
        expand_grid(validate_params(params), "smoke")
