import pandas as pd
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import REPO_ROOT


def test_grid_count_of_paper_preset():
    result = CliRunner().invoke(main, ["grid", "--params", str(REPO_ROOT / "params.yaml"), "--preset", "paper", "--count"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "3888"


def test_grid_unknown_preset_one_line_error():
    result = CliRunner().invoke(main, ["grid", "--params", str(REPO_ROOT / "params.yaml"), "--preset", "nope"])
    assert result.exit_code == 1
    assert "Error: unknown preset 'nope'" in result.output
    assert "Traceback" not in result.output


def test_train_single_run(tmp_path, prepared_fashion_mnist):
    out = tmp_path / "run"
    args = [
        "train", "--optimizer", "adamw", "--lr", "0.005", "--weight-decay", "0.05", "--epochs", "1", "--width", "0.0625",
        "--train-per-class", "5", "--test-per-class", "5", "--eval-every", "1", "--batch-size", "25",
        "--data-root", str(prepared_fashion_mnist.parent), "--out", str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    history = pd.read_parquet(out / "history.parquet")
    assert history["epoch"].tolist() == [0, 1]
    assert (out / "dumps.pt").is_file()


def test_train_unknown_optimizer_rejected(tmp_path):
    result = CliRunner().invoke(main, ["train", "--optimizer", "adamax", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown optimizer 'adamax'" in result.output


def test_train_missing_data_says_how_to_prepare(tmp_path):
    result = CliRunner().invoke(main, ["train", "--data-root", str(tmp_path), "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert result.exit_code == 1
    assert "missing prepared dataset" in result.output
    assert "prepare" in result.output
