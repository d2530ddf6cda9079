"""Shared fixtures: the real Fashion-MNIST files and small prepared datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data import DEFAULT_FASHION_MNIST_DIR, prepare_dataset
from pipeline.theory import one_torch_thread

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    path = Path(DEFAULT_FASHION_MNIST_DIR)
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"Fashion-MNIST IDX files not found in {path}: install Debian's dataset-fashion-mnist package (make install)")
    return path


@pytest.fixture(scope="session")
def prepared_fashion_mnist(tmp_path_factory, fashion_mnist_dir) -> Path:
    """Folder with train.pt and test.pt of the real Fashion-MNIST, prepared once per session."""
    out = tmp_path_factory.mktemp("data") / "fashion_mnist"
    prepare_dataset("fashion_mnist", out, raw_root=out.parent / "raw", fashion_mnist_dir=str(fashion_mnist_dir), download=False)
    return out


@pytest.fixture(scope="module")
def single_thread():
    """Run a test module on one intra-op torch thread, then restore the previous count."""
    with one_torch_thread():
        yield
