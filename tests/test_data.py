import gzip
import pickle

import numpy as np
import pytest
import torch

from pipeline.data import (
    DatasetError,
    balanced_subset,
    load_prepared,
    load_raw_split,
    normalised_inputs,
    prepare_dataset,
    read_idx,
)


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def make_idx_folder(folder, n_train=30, n_test=20, compress=False, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for stem_images, stem_labels, n in (
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", n_train),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", n_test),
    ):
        write_idx(folder / stem_images, rng.integers(0, 256, size=(n, 28, 28)), compress)
        write_idx(folder / stem_labels, np.arange(n) % 10, compress)


def test_real_fashion_mnist_shapes(prepared_fashion_mnist):
    train = load_prepared(prepared_fashion_mnist / "train.pt")
    test = load_prepared(prepared_fashion_mnist / "test.pt")
    assert train["images"].shape == (60000, 1, 28, 28)
    assert test["images"].shape == (10000, 1, 28, 28)
    assert train["images"].dtype == torch.uint8
    assert torch.equal(torch.bincount(train["labels"]), torch.full((10,), 6000))
    # Published channel statistics of Fashion-MNIST's training split.
    assert train["mean"].item() == pytest.approx(0.2860, abs=1e-3)
    assert train["std"].item() == pytest.approx(0.3530, abs=1e-3)
    assert torch.equal(test["mean"], train["mean"])


def test_normalised_inputs_zero_mean_unit_std(prepared_fashion_mnist):
    payload = load_prepared(prepared_fashion_mnist / "train.pt")
    inputs, labels = normalised_inputs(payload, torch.arange(60000))
    assert inputs.dtype == torch.float32
    assert inputs.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert inputs.std().item() == pytest.approx(1.0, abs=1e-3)
    assert labels.shape == (60000,)


def test_balanced_subset_is_seeded_and_balanced():
    labels = torch.arange(1000) % 10
    first = balanced_subset(labels, 7, seed=3)
    again = balanced_subset(labels, 7, seed=3)
    other = balanced_subset(labels, 7, seed=4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(torch.bincount(labels[first]), torch.full((10,), 7))
    assert torch.equal(balanced_subset(labels, None, seed=0), torch.arange(1000))


def test_balanced_subset_too_large_rejected():
    with pytest.raises(DatasetError, match="invalid subset size 200 per class: class 0 has only 100"):
        balanced_subset(torch.arange(1000) % 10, 200, seed=0)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_loader_reads_torchvision_layout(tmp_path, compress):
    make_idx_folder(tmp_path / "MNIST" / "raw", compress=compress)
    split = load_raw_split("mnist", "train", raw_root=tmp_path, fashion_mnist_dir=None, download=False)
    assert split.images.shape == (30, 1, 28, 28)
    assert split.labels.tolist() == [i % 10 for i in range(30)]


def test_prepare_mnist_writes_both_splits(tmp_path):
    make_idx_folder(tmp_path / "raw" / "MNIST" / "raw")
    paths = prepare_dataset("mnist", tmp_path / "mnist", raw_root=tmp_path / "raw", fashion_mnist_dir=None, download=False)
    assert [p.name for p in paths] == ["train.pt", "test.pt"]
    assert load_prepared(paths[1])["images"].shape == (20, 1, 28, 28)


def test_cifar10_loader_reads_pickled_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    train = load_raw_split("cifar10", "train", raw_root=tmp_path, fashion_mnist_dir=None, download=False)
    test = load_raw_split("cifar10", "test", raw_root=tmp_path, fashion_mnist_dir=None, download=False)
    assert train.images.shape == (20, 3, 32, 32)
    assert test.labels.tolist() == [0, 1, 2, 3]


def test_cifar10_corrupt_batch_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="corrupt CIFAR-10 batch .*data_batch_1"):
        load_raw_split("cifar10", "train", raw_root=tmp_path, fashion_mnist_dir=None, download=False)


def test_truncated_idx_rejected(tmp_path):
    make_idx_folder(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="corrupt IDX file .*train-images-idx3-ubyte: header announces"):
        read_idx(path)


def test_truncated_gzip_rejected(tmp_path):
    make_idx_folder(tmp_path, compress=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DatasetError, match="corrupt IDX file"):
        read_idx(path)


def test_missing_fashion_mnist_says_what_to_install(tmp_path):
    with pytest.raises(DatasetError, match="Fashion-MNIST not found: data.fashion_mnist_dir='/nonexistent'.*dataset-fashion-mnist"):
        load_raw_split("fashion_mnist", "train", raw_root=tmp_path, fashion_mnist_dir="/nonexistent", download=False)


def test_truncated_prepared_file_rejected(tmp_path):
    make_idx_folder(tmp_path / "raw" / "MNIST" / "raw")
    train, _ = prepare_dataset("mnist", tmp_path / "mnist", raw_root=tmp_path / "raw", fashion_mnist_dir=None, download=False)
    train.write_bytes(train.read_bytes()[:200])
    with pytest.raises(DatasetError, match="corrupt prepared dataset .*train.pt.*run prepare_data again"):
        load_prepared(train)


def test_unknown_dataset_rejected(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'svhn'"):
        load_raw_split("svhn", "train", raw_root=tmp_path, fashion_mnist_dir=None, download=False)
