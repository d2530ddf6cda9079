"""Datasets of the study (Fashion-MNIST, MNIST, CIFAR-10): import into cached
tensor files, class-balanced seeded subsets, and channel normalisation."""

from __future__ import annotations

import gzip
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

DATASETS = ("fashion_mnist", "mnist", "cifar10")
SPLITS = ("train", "test")
NUM_CLASSES = {"fashion_mnist": 10, "mnist": 10, "cifar10": 10}
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# File stems of the IDX format shared by MNIST and Fashion-MNIST.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_BATCHES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}


class DatasetError(RuntimeError):
    """A missing, corrupt or unknown dataset. The message names the fix."""


@dataclass
class Split:
    """One split of a dataset: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def check_dataset_name(name: str) -> None:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")


# ---------------------------------------------------------------- IDX files


def find_idx_file(directory: Path, stem: str) -> Path:
    """Return the path of ``stem`` or ``stem.gz`` in ``directory``."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"missing IDX file {stem}[.gz] in {directory}: install Debian's dataset-fashion-mnist "
        "package, or point data.fashion_mnist_dir in params.yaml at a folder with the four IDX files"
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or gzip) of unsigned bytes into an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise DatasetError(f"corrupt IDX file {path}: {error}; reinstall or re-download the dataset") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"corrupt IDX file {path}: not an unsigned-byte IDX header; reinstall or re-download the dataset")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise DatasetError(
            f"corrupt IDX file {path}: header announces {expected} bytes of shape {shape}, "
            f"file holds {len(data) - header}; reinstall or re-download the dataset"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_split(directory: Path, split: str) -> Split:
    image_stem, label_stem = IDX_FILES[split]
    images = read_idx(find_idx_file(directory, image_stem))
    labels = read_idx(find_idx_file(directory, label_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"corrupt IDX files in {directory}: {split} images have shape {images.shape} "
            f"and labels {labels.shape}; reinstall or re-download the dataset"
        )
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


# ------------------------------------------------------------- CIFAR-10 files


def load_cifar10_split(directory: Path, split: str) -> Split:
    """Read the python-pickle batches of CIFAR-10 from ``directory``."""
    images, labels = [], []
    for name in CIFAR10_BATCHES[split]:
        path = directory / name
        if not path.is_file():
            raise DatasetError(f"missing CIFAR-10 batch {path}: set data.download: true in params.yaml or copy the batches there")
        try:
            with open(path, "rb") as handle:
                batch = pickle.load(handle, encoding="latin1")
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            targets = np.asarray(batch["labels"], dtype=np.int64)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError) as error:
            raise DatasetError(f"corrupt CIFAR-10 batch {path}: {error}; delete it and download again") from error
        images.append(data)
        labels.append(targets)
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


# ----------------------------------------------------------------- sources


def download_with_torchvision(name: str, root: Path) -> Path:
    """Download ``name`` through torchvision into ``root`` and return the folder of its raw files."""
    import torchvision

    classes = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST}
    log.info("downloading dataset=%s root=%s", name, root)
    try:
        if name == "cifar10":
            torchvision.datasets.CIFAR10(str(root), train=True, download=True)
            torchvision.datasets.CIFAR10(str(root), train=False, download=True)
            return root / "cifar-10-batches-py"
        dataset = classes[name](str(root), train=True, download=True)
        classes[name](str(root), train=False, download=True)
        return Path(dataset.raw_folder)
    except (OSError, RuntimeError) as error:
        raise DatasetError(
            f"download of dataset {name!r} failed ({error}); copy its files into {root} or, for "
            "fashion_mnist, install Debian's dataset-fashion-mnist package"
        ) from error


def load_raw_split(name: str, split: str, *, raw_root: Path, fashion_mnist_dir: str | None, download: bool) -> Split:
    """Load one split of a dataset from local files, downloading them if allowed and needed."""
    check_dataset_name(name)
    if name == "fashion_mnist" and fashion_mnist_dir and Path(fashion_mnist_dir).is_dir():
        return load_idx_split(Path(fashion_mnist_dir), split)

    torchvision_folders = {
        "mnist": raw_root / "MNIST" / "raw",
        "fashion_mnist": raw_root / "FashionMNIST" / "raw",
        "cifar10": raw_root / "cifar-10-batches-py",
    }
    folder = torchvision_folders[name]
    loader = load_cifar10_split if name == "cifar10" else load_idx_split
    try:
        return loader(folder, split)
    except DatasetError:
        if not download:
            if name == "fashion_mnist":
                raise DatasetError(
                    f"Fashion-MNIST not found: data.fashion_mnist_dir={fashion_mnist_dir!r} is not a folder and "
                    f"{folder} holds no IDX files; install Debian's dataset-fashion-mnist package or set "
                    "data.fashion_mnist_dir in params.yaml"
                ) from None
            raise
    folder = download_with_torchvision(name, raw_root)
    return loader(folder, split)


# ---------------------------------------------------------------- caching


def channel_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return per-channel mean and standard deviation of uint8 images, scaled to [0, 1]."""
    values = images.to(torch.float64) / 255.0
    mean = values.mean(dim=(0, 2, 3))
    std = values.std(dim=(0, 2, 3))
    return mean.to(torch.float32), std.to(torch.float32)


def prepare_dataset(name: str, out_dir: Path, *, raw_root: Path, fashion_mnist_dir: str | None, download: bool) -> list[Path]:
    """Import both splits of ``name`` into ``out_dir/{train,test}.pt``.

    Each file stores uint8 images, int64 labels and the train split's channel mean and std,
    so that every split is normalised with the training statistics.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = {s: load_raw_split(name, s, raw_root=raw_root, fashion_mnist_dir=fashion_mnist_dir, download=download) for s in SPLITS}
    mean, std = channel_statistics(splits["train"].images)
    paths = []
    for split, data in splits.items():
        path = out_dir / f"{split}.pt"
        payload = {"images": data.images, "labels": data.labels, "mean": mean, "std": std, "dataset": name, "split": split}
        tmp = path.with_suffix(".pt.tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        log.info("prepared dataset=%s split=%s n=%d shape=%s path=%s", name, split, len(data), tuple(data.images.shape[1:]), path)
        paths.append(path)
    return paths


def load_prepared(path: Path) -> dict:
    """Load a cached split written by ``prepare_dataset``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing prepared dataset {path}: run `python -m pipeline prepare-data --dataset {path.parent.name}` or `snakemake {path}`")
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise DatasetError(f"corrupt prepared dataset {path} ({type(error).__name__}: {error}); delete it and run prepare_data again") from error
    missing = {"images", "labels", "mean", "std"} - set(payload)
    if missing:
        raise DatasetError(f"corrupt prepared dataset {path}: missing {sorted(missing)}; delete it and run prepare_data again")
    return payload


# ---------------------------------------------------------------- subsets


def balanced_subset(labels: torch.Tensor, per_class: int | None, seed: int) -> torch.Tensor:
    """Return sorted indices of ``per_class`` samples of every class, drawn with ``seed``.

    ``None`` or a value at least as large as the smallest class keeps every sample.
    """
    if per_class is None:
        return torch.arange(labels.shape[0])
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for k in torch.unique(labels).tolist():
        members = torch.nonzero(labels == k).flatten()
        if per_class > members.shape[0]:
            raise DatasetError(f"invalid subset size {per_class} per class: class {k} has only {members.shape[0]} samples")
        order = torch.randperm(members.shape[0], generator=generator)[:per_class]
        chosen.append(members[order])
    return torch.sort(torch.cat(chosen)).values


def normalised_inputs(payload: dict, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return float32 inputs normalised with the stored channel statistics, and labels."""
    images = payload["images"][indices].to(torch.float32) / 255.0
    mean = payload["mean"].view(1, -1, 1, 1)
    std = payload["std"].view(1, -1, 1, 1)
    return (images - mean) / std, payload["labels"][indices]



def check_sources(names, *, data_root: Path, fashion_mnist_dir: str | None, download: bool) -> None:
    """Raise ``DatasetError`` before any job starts if a dataset can be neither found nor downloaded.

    The pseudo-dataset ``ufm`` of the unconstrained feature model needs no files and is skipped.
    """
    from pipeline.ufm import UFM_NAME  # here, because pipeline.ufm imports this module through pipeline.training

    for name in names:
        if name == UFM_NAME:
            continue
        check_dataset_name(name)
        prepared = all((Path(data_root) / name / f"{split}.pt").is_file() for split in SPLITS)
        if prepared or download:
            continue
        if name == "fashion_mnist" and fashion_mnist_dir and Path(fashion_mnist_dir).is_dir():
            continue
        raw = {"fashion_mnist": "FashionMNIST/raw", "mnist": "MNIST/raw", "cifar10": "cifar-10-batches-py"}[name]
        if (Path(data_root) / "raw" / raw).is_dir():
            continue
        if name == "fashion_mnist":
            raise DatasetError(
                f"Fashion-MNIST not found: data.fashion_mnist_dir={fashion_mnist_dir!r} is not a folder and data.download is false; "
                "install Debian's dataset-fashion-mnist package, set data.fashion_mnist_dir, or set data.download: true"
            )
        raise DatasetError(f"dataset {name!r} not found in {Path(data_root) / 'raw' / raw} and data.download is false; set data.download: true or copy its files there")
