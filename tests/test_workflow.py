"""End-to-end runs of the real Snakemake workflow and DVC pipeline on the smoke
preset and real Fashion-MNIST, each in a fresh copy of the repository."""

import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def copy_repository(target):
    """Copy the tracked and untracked-but-not-ignored files, as a fresh clone would hold them."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def snakemake(cwd, *args, check=True):
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def planned_jobs(cwd, *args) -> dict[str, int]:
    """Return the job count per rule of a dry run."""
    output = snakemake(cwd, "-n", "--quiet", "rules", *args).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", output, re.MULTILINE) if m.group(1) != "total"}


def edit_params(repo, change):
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    change(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory, fashion_mnist_dir):
    """A repository copy in which the smoke preset has run to completion."""
    repo = copy_repository(tmp_path_factory.mktemp("repo"))
    snakemake(repo, "--cores", "2", "--config", "preset=smoke")
    return repo


def test_smoke_run_writes_tables_and_figures(smoke_repo):
    results = smoke_repo / "results" / "smoke"
    runs = pd.read_parquet(results / "runs.parquet")
    assert sorted(runs["optimizer"]) == ["sgd", "sgdw"]
    for column in ("dataset", "architecture", "optimizer", "lr", "momentum", "weight_decay", "NC0", "NC1", "NC2", "NC3", "NC4", "NC0_pct", "valid", "train_accuracy", "test_accuracy"):
        assert column in runs.columns
    history = pd.read_parquet(results / "history.parquet")
    assert sorted(history["epoch"].unique()) == [0, 1, 2]
    for name in ("table2.md", "table2.csv", "claims.csv", "claims.json", "nc_vs_weight_decay.html"):
        assert (results / "figures" / name).stat().st_size > 0
    assert (results / "figures" / "nc_vs_weight_decay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| sgdw |" in (results / "figures" / "table2.md").read_text().replace("  ", " ")
    for log in ("train", "metrics"):
        assert any((smoke_repo / "logs" / "smoke" / log).rglob("*.log"))


def test_rerun_has_nothing_to_do(smoke_repo):
    assert planned_jobs(smoke_repo, "--config", "preset=smoke") == {}


def test_edit_reruns_only_touched_runs(smoke_repo):
    edit_params(smoke_repo, lambda p: p["presets"]["smoke"]["optimizers"]["sgdw"].update(weight_decay=[0.05, 0.005]))
    jobs = planned_jobs(smoke_repo, "--config", "preset=smoke")
    assert jobs.get("train") == 1
    assert jobs.get("metrics") == 1
    assert "prepare_data" not in jobs


def test_metric_code_change_skips_training(smoke_repo):
    # Snakemake 9.18 and later compare checksums, so the edit must change the content.
    metrics_code = smoke_repo / "pipeline" / "metrics.py"
    metrics_code.write_text(metrics_code.read_text() + "\n# an edit of the metric code\n")
    jobs = planned_jobs(smoke_repo, "--config", "preset=smoke")
    assert "train" not in jobs or jobs["train"] == 1  # the run added by the previous test, if it ran first
    assert jobs.get("metrics", 0) >= 2


def test_paper_dry_run_lists_3888_training_jobs(smoke_repo):
    jobs = planned_jobs(smoke_repo, "--config", "preset=paper")
    assert jobs["train"] == 3888
    assert jobs["metrics"] == 3888


def test_unknown_preset_stops_before_jobs(smoke_repo):
    result = snakemake(smoke_repo, "--cores", "1", "--config", "preset=nonexistent", check=False)
    assert result.returncode != 0
    assert "error: unknown preset 'nonexistent'" in result.stderr
    assert "Building DAG" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["presets"]["smoke"].update(epochs="ten"), "at presets.smoke.epochs: 'ten' is not of type 'integer'"),
        (lambda p: p["presets"]["smoke"]["optimizers"].update(adamax={"lr": [0.1], "momentum": [0.9], "weight_decay": [0.0]}), "unknown optimizer 'adamax'"),
        (lambda p: p["presets"]["smoke"].update(architectures=["resnet18"]), "unknown architecture 'resnet18'"),
    ],
)
def test_invalid_params_stop_before_jobs(tmp_path, change, message):
    repo = copy_repository(tmp_path)
    edit_params(repo, change)
    result = snakemake(repo, "--cores", "1", "--config", "preset=smoke", check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Building DAG" not in result.stdout + result.stderr


def test_missing_dataset_dir_stops_with_one_line(tmp_path):
    repo = copy_repository(tmp_path)
    edit_params(repo, lambda p: p["data"].update(fashion_mnist_dir="/nonexistent", download=False))
    result = snakemake(repo, "--cores", "1", "--config", "preset=smoke", check=False)
    assert result.returncode != 0
    assert "Fashion-MNIST not found: data.fashion_mnist_dir='/nonexistent'" in result.stdout + result.stderr
    assert not (repo / "results" / "smoke" / "runs").exists()


def test_dvc_repro_on_fresh_clone(tmp_path, fashion_mnist_dir):
    repo = copy_repository(tmp_path)
    edit_params(repo, lambda p: p.update(preset="smoke"))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    first = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    runs_dir = repo / "results" / "smoke" / "runs"
    finished = sorted(p.relative_to(runs_dir) for p in runs_dir.rglob("dumps.pt"))
    assert len(finished) == 2
    mtimes = {p: (runs_dir / p).stat().st_mtime_ns for p in finished}

    edit_params(repo, lambda p: p["presets"]["smoke"]["optimizers"]["sgd"].update(lr=[0.05, 0.02]))
    second = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    now = sorted(p.relative_to(runs_dir) for p in runs_dir.rglob("dumps.pt"))
    assert len(now) == 3
    # Finished runs survive and are not retrained.
    assert {p: (runs_dir / p).stat().st_mtime_ns for p in finished} == mtimes
    assert (repo / "results" / "smoke" / "figures" / "claims.json").is_file()
