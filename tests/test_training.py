import json
import math

import pandas as pd
import pytest
import torch

from pipeline.config import RunConfig
from pipeline.run_metrics import DumpError, load_dumps, write_run_metrics
from pipeline.training import evaluation_epochs, step_decay_lr, train_run


def tiny_config(**changes) -> RunConfig:
    values = dict(
        dataset="fashion_mnist", architecture="resnet9", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-3,
        seed=0, width=0.0625, epochs=3, batch_size=32, eval_every=1, train_per_class=8, test_per_class=5,
    )
    values.update(changes)
    return RunConfig(**values)


def run_tiny(tmp_path, prepared, **changes):
    cfg = tiny_config(**changes)
    out = tmp_path / "run"
    history = train_run(
        cfg, train_path=prepared / "train.pt", test_path=prepared / "test.pt",
        history_path=out / "history.parquet", dumps_path=out / "dumps.pt", checkpoint_path=out / "checkpoint.pt",
    )
    return cfg, out, history


def test_step_decay_at_thirds():
    assert [step_decay_lr(1.0, e, 6) for e in range(6)] == [1.0, 1.0, 0.1, 0.1, pytest.approx(0.01), pytest.approx(0.01)]
    assert step_decay_lr(0.0679, 66, 200) == 0.0679
    assert step_decay_lr(0.0679, 67, 200) == pytest.approx(0.00679)
    assert step_decay_lr(0.0679, 134, 200) == pytest.approx(0.000679)


def test_evaluation_epochs_include_first_and_last():
    assert evaluation_epochs(10, 4) == [0, 4, 8, 10]
    assert evaluation_epochs(3, 1) == [0, 1, 2, 3]


def test_run_writes_history_dumps_checkpoint(tmp_path, prepared_fashion_mnist):
    cfg, out, history = run_tiny(tmp_path, prepared_fashion_mnist)
    stored = pd.read_parquet(out / "history.parquet")
    assert stored["epoch"].tolist() == [0, 1, 2, 3]
    assert stored["step"].tolist() == [0, 3, 6, 9]
    assert stored["lr"].tolist() == pytest.approx([0.05, 0.05, 0.005, 0.0005])
    assert not stored["diverged"].any()
    for column in ("NC0", "NC1", "NC2", "NC3", "NC4", "train_loss", "train_accuracy", "test_accuracy", "W_singular_values"):
        assert column in stored.columns
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["config"] == cfg.to_dict()
    assert "classifier.weight" in checkpoint["model"]


def test_recomputed_metrics_match_history(tmp_path, prepared_fashion_mnist):
    _, out, history = run_tiny(tmp_path, prepared_fashion_mnist)
    result = write_run_metrics(out / "dumps.pt", out / "metrics.json")
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["final"] == result["final"]
    for name in ("NC0", "NC1", "NC2", "NC3", "NC4", "alpha"):
        assert result["initial"][name] == pytest.approx(history[name].iloc[0], rel=1e-9)
        assert result["final"][name] == pytest.approx(history[name].iloc[-1], rel=1e-9)


def test_same_seed_same_history(tmp_path, prepared_fashion_mnist):
    _, _, first = run_tiny(tmp_path / "a", prepared_fashion_mnist, epochs=1)
    _, _, second = run_tiny(tmp_path / "b", prepared_fashion_mnist, epochs=1)
    pd.testing.assert_frame_equal(first, second)


def test_divergent_run_marked_not_raised(tmp_path, prepared_fashion_mnist):
    _, out, history = run_tiny(tmp_path, prepared_fashion_mnist, lr=1e38, momentum=0.0, weight_decay=0.0)
    assert history["diverged"].all()
    result = write_run_metrics(out / "dumps.pt", out / "metrics.json")
    assert result["diverged"] is True
    assert math.isnan(result["final"]["NC0"])
    assert math.isfinite(result["initial"]["NC0"])


def test_truncated_dump_rejected(tmp_path, prepared_fashion_mnist):
    _, out, _ = run_tiny(tmp_path, prepared_fashion_mnist, epochs=1)
    dumps = out / "dumps.pt"
    dumps.write_bytes(dumps.read_bytes()[:1000])
    with pytest.raises(DumpError, match="corrupt training dump .*dumps.pt.*train it again"):
        load_dumps(dumps)


def test_metrics_command_reads_training_dump(tmp_path, prepared_fashion_mnist):
    from click.testing import CliRunner

    from pipeline.cli import main

    _, out, history = run_tiny(tmp_path, prepared_fashion_mnist, epochs=1)
    result = CliRunner().invoke(main, ["metrics", str(out / "dumps.pt"), "--json"])
    assert result.exit_code == 0, result.output
    values = json.loads(result.output.strip().splitlines()[-1])
    assert values["NC0"] == pytest.approx(history["NC0"].iloc[-1], rel=1e-9)
    assert values["NC3"] == pytest.approx(history["NC3"].iloc[-1], rel=1e-9)
