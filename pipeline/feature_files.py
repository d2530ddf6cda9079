"""Reading and checking the input files of the ``metrics`` command: .npz archives, .pt
dictionaries and Parquet feature tables, turned into numpy arrays or a ClassStats dump.
"""

from __future__ import annotations

import logging
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

FEATURE_SUFFIXES = (".npz", ".pt", ".parquet")
WEIGHT_SUFFIXES = (".npy", ".npz", ".pt")
ARRAY_NAMES = ("features", "labels", "weights", "weight", "bias", "test_features", "test_labels")
FEATURE_COLUMN = re.compile(r"f(0|[1-9][0-9]*)")

PARQUET_LAYOUT = (
    "a Parquet file needs an integer 'label' column and feature columns f0..f{p-1}; "
    "an optional 'split' column marks rows 'train' or 'test'"
)

# torch.load (2.x) reports damaged or foreign bytes through undocumented exception
# types that depend on where reading stops: RuntimeError from the zip reader,
# UnpicklingError from the weights_only filter, and KeyError, IndexError, ValueError or
# EOFError from the legacy unpickler. Reading is weights_only, so no code runs.
_TORCH_LOAD_ERRORS = (Exception,)
# zipfile raises NotImplementedError for a damaged header that names an unknown zip version.
_NUMPY_LOAD_ERRORS = (OSError, ValueError, EOFError, NotImplementedError, zipfile.BadZipFile, zlib.error)


class FeatureFileError(ValueError):
    """An input file that cannot be read or whose arrays are invalid; the message is one line."""


@dataclass
class MetricInputs:
    """Checked arrays for the metrics: float64 matrices, int64 labels.

    Exactly one of ``features`` (with ``labels``) and ``stats_state`` is set.
    """

    weights: np.ndarray
    bias: np.ndarray | None = None
    features: np.ndarray | None = None
    labels: np.ndarray | None = None
    stats_state: dict[str, torch.Tensor] | None = None
    test_features: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return int(self.weights.shape[0])


# -- readers ---------------------------------------------------------------------


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise FeatureFileError(
                f"{path} contains a single array, not an .npz archive; "
                "save named arrays with numpy.savez(path, features=..., labels=..., weights=...)"
            )
        with archive:
            return {name: archive[name] for name in archive.files}
    except _NUMPY_LOAD_ERRORS as error:
        if isinstance(error, FeatureFileError):
            raise
        raise FeatureFileError(
            f"cannot read {path} as an .npz archive ({_one_line(error)}); "
            "check that the file is complete and was written by numpy.savez without object arrays"
        ) from None


def _tensor_to_numpy(value: torch.Tensor) -> np.ndarray:
    value = value.detach().cpu()
    if value.dtype in (torch.bfloat16, torch.float16):
        value = value.float()
    return value.numpy()


def _load_pt(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS as error:
        raise FeatureFileError(
            f"cannot read {path} with torch.load(weights_only=True) ({_one_line(error)}); "
            "check that the file is complete and contains a dict of tensors saved by torch.save"
        ) from None


def _pt_arrays(content: Any, path: Path) -> dict[str, Any]:
    """Return the tensors of a loaded .pt dict as numpy arrays; ``stats`` stays a dict of tensors."""
    if not isinstance(content, dict):
        raise FeatureFileError(
            f"{path} contains a {type(content).__name__}, expected a dict of tensors "
            "with keys features, labels, weights (or stats, weights)"
        )
    if isinstance(content.get("final"), dict) and "initial" in content:
        # A training job's dumps.pt: read its final snapshot.
        logger.info("reading the final snapshot of the training dump %s", path)
        content = content["final"]
    elif "initial" in content and "final" in content:
        raise FeatureFileError(f"{path} is the dump of a diverged run: it has no final snapshot to read")
    arrays: dict[str, Any] = {}
    for name, value in content.items():
        if isinstance(value, torch.Tensor):
            arrays[name] = _tensor_to_numpy(value)
        elif isinstance(value, np.ndarray) or name == "stats":
            arrays[name] = value
        elif name in ARRAY_NAMES:
            raise FeatureFileError(f"array '{name}' in {path} is a {type(value).__name__}; save it as a tensor")
    return arrays


def _read_parquet(path: Path) -> dict[str, Any]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pyarrow.ArrowException) as error:
        raise FeatureFileError(
            f"cannot read {path} as Parquet ({_one_line(error)}); check that the file is complete"
        ) from None

    names = table.column_names
    if "label" not in names:
        raise FeatureFileError(f"column 'label' is missing from {path}; {PARQUET_LAYOUT}")
    indices = sorted(int(match.group(1)) for name in names if (match := FEATURE_COLUMN.fullmatch(name)))
    if not indices:
        raise FeatureFileError(f"{path} has no feature columns f0, f1, ...; {PARQUET_LAYOUT}")
    if indices != list(range(len(indices))):
        missing = sorted(set(range(max(indices) + 1)) - set(indices))
        raise FeatureFileError(
            f"feature columns of {path} skip {', '.join(f'f{i}' for i in missing[:5])}; {PARQUET_LAYOUT}"
        )
    for name in ["label", *(f"f{i}" for i in indices)]:
        null_count = table.column(name).null_count
        if null_count:
            raise FeatureFileError(
                f"column '{name}' of {path} has {null_count} missing values; fill or drop those rows"
            )

    features = np.column_stack([table.column(f"f{i}").to_numpy() for i in indices])
    # Copies, because Arrow hands out read-only views and torch.from_numpy warns on those.
    labels = np.array(table.column("label").to_numpy())
    if "split" not in names:
        return {"features": features, "labels": labels}

    split = np.asarray(table.column("split").to_pylist(), dtype=object)
    unknown = sorted({str(value) for value in split} - {"train", "test"})
    if unknown:
        raise FeatureFileError(
            f"column 'split' of {path} has values {unknown[:5]}; use 'train' or 'test'"
        )
    is_test = split == "test"
    arrays = {"features": features[~is_test], "labels": labels[~is_test]}
    if is_test.any():
        arrays["test_features"] = features[is_test]
        arrays["test_labels"] = labels[is_test]
    return arrays


def _read_weights(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            weights = np.load(path, allow_pickle=False)
        except _NUMPY_LOAD_ERRORS as error:
            raise FeatureFileError(
                f"cannot read {path} as .npy ({_one_line(error)}); check that the file is complete"
            ) from None
        return {"weights": weights}
    if suffix == ".npz":
        arrays = _read_npz(path)
    elif suffix == ".pt":
        content = _load_pt(path)
        if isinstance(content, torch.Tensor):
            return {"weights": _tensor_to_numpy(content)}
        arrays = _pt_arrays(content, path)
    else:
        raise FeatureFileError(
            f"unsupported weights file extension '{path.suffix}' for {path}; use one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    if "weights" not in arrays:
        raise FeatureFileError(f"array 'weights' is missing from {path}; save the (K, p) classifier weight as 'weights'")
    return {name: arrays[name] for name in ("weights", "bias") if name in arrays}


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 160 else text[:157] + "..."


# -- checks ----------------------------------------------------------------------


def _real_array(arrays: dict[str, Any], name: str, ndim: int, source: str) -> np.ndarray:
    array = np.asarray(arrays[name])
    if array.dtype.kind not in "fiu":
        raise FeatureFileError(f"array '{name}' in {source} has dtype {array.dtype}; expected real numbers")
    if array.ndim != ndim:
        expected = "2-D (rows, p)" if ndim == 2 else "1-D"
        raise FeatureFileError(f"array '{name}' in {source} must be {expected}, got shape {array.shape}")
    array = array.astype(np.float64, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise FeatureFileError(
            f"array '{name}' in {source} contains {int(bad.sum())} NaN or infinite values "
            f"(first at index {first}); drop or repair those entries"
        )
    return array


def _label_array(arrays: dict[str, Any], name: str, rows: int, num_classes: int, source: str) -> np.ndarray:
    labels = np.asarray(arrays[name])
    if labels.dtype.kind not in "iu":
        raise FeatureFileError(
            f"array '{name}' in {source} has dtype {labels.dtype}; expected integer class indices 0..{num_classes - 1}"
        )
    if labels.shape != (rows,):
        raise FeatureFileError(
            f"array '{name}' in {source} has shape {labels.shape}, expected ({rows},), one label per feature row"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise FeatureFileError(
            f"array '{name}' in {source} has values from {labels.min()} to {labels.max()}, outside "
            f"0..{num_classes - 1} (K = {num_classes} from weights.shape[0]); "
            "relabel the classes as 0..K-1 or pass weights with one row per class"
        )
    return labels.astype(np.int64, copy=False)


def _feature_matrix(arrays: dict[str, Any], name: str, dim: int, source: str) -> np.ndarray:
    features = _real_array(arrays, name, 2, source)
    if features.shape[1] != dim:
        raise FeatureFileError(
            f"array '{name}' in {source} has {features.shape[1]} columns but weights has p = {dim}; "
            "weights must have shape (K, p) with one column per feature"
        )
    return features


def check_arrays(arrays: dict[str, Any], source: str) -> MetricInputs:
    """Check named arrays and return them as MetricInputs; raise FeatureFileError on the first problem.

    ``weights`` (K, p), which training dumps name ``weight``, is required together
    with either ``features`` (N, p) and ``labels`` (N,) or ``stats`` (a ClassStats
    state_dict). ``bias`` (K,), ``test_features`` (N_test, p) and ``test_labels``
    (N_test,) are optional.
    """
    if "weights" not in arrays and "weight" in arrays:
        arrays = {**arrays, "weights": arrays["weight"]}
    if "weights" not in arrays:
        raise FeatureFileError(
            f"array 'weights' is missing from {source}; add the (K, p) classifier weight or pass --weights"
        )
    weights = _real_array(arrays, "weights", 2, source)
    num_classes, dim = weights.shape
    if num_classes < 2:
        raise FeatureFileError(f"array 'weights' in {source} has shape {weights.shape}, so K = {num_classes}; the metrics need K >= 2 classes")
    inputs = MetricInputs(weights=weights)

    if "bias" in arrays:
        inputs.bias = _real_array(arrays, "bias", 1, source)
        if inputs.bias.shape != (num_classes,):
            raise FeatureFileError(
                f"array 'bias' in {source} has shape {inputs.bias.shape}, expected ({num_classes},) to match weights"
            )

    if "features" in arrays or "stats" not in arrays:
        for name in ("features", "labels"):
            if name not in arrays:
                raise FeatureFileError(
                    f"array '{name}' is missing from {source}; save features (N, p), labels (N,) and weights (K, p)"
                )
        inputs.features = _feature_matrix(arrays, "features", dim, source)
        if inputs.features.shape[0] == 0:
            raise FeatureFileError(f"array 'features' in {source} has no rows; at least one sample per class is needed")
        inputs.labels = _label_array(arrays, "labels", inputs.features.shape[0], num_classes, source)
    else:
        inputs.stats_state = _stats_state(arrays["stats"], num_classes, dim, source)

    if "test_labels" in arrays and "test_features" not in arrays:
        raise FeatureFileError(f"array 'test_labels' in {source} has no 'test_features'; add them or drop test_labels")
    if "test_features" in arrays:
        inputs.test_features = _feature_matrix(arrays, "test_features", dim, source)
        if "test_labels" in arrays:
            rows = inputs.test_features.shape[0]
            inputs.test_labels = _label_array(arrays, "test_labels", rows, num_classes, source)
    return inputs


def _stats_state(state: Any, num_classes: int, dim: int, source: str) -> dict[str, torch.Tensor]:
    from pipeline.stats import STATE_KEYS

    if not isinstance(state, dict):
        raise FeatureFileError(f"entry 'stats' in {source} is a {type(state).__name__}; expected ClassStats.state_dict()")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise FeatureFileError(
            f"entry 'stats' in {source} is missing {', '.join(missing)}; save ClassStats.state_dict() as 'stats'"
        )
    counts = torch.as_tensor(state["counts"])
    means = torch.as_tensor(state["means"])
    if tuple(counts.shape) != (num_classes,) or tuple(means.shape) != (num_classes, dim):
        raise FeatureFileError(
            f"entry 'stats' in {source} has means of shape {tuple(means.shape)}, "
            f"expected ({num_classes}, {dim}) to match weights"
        )
    return {key: torch.as_tensor(state[key]) for key in STATE_KEYS}


# -- entry point -----------------------------------------------------------------


def load_metric_inputs(path: Path | str, weights_path: Path | str | None = None) -> MetricInputs:
    """Read a feature file and an optional weights file, check them, and return MetricInputs.

    ``path`` is an .npz or .pt file with the arrays of :func:`check_arrays`, or a
    Parquet table (see PARQUET_LAYOUT) that needs ``weights_path``. ``weights_path``
    is an .npy (the (K, p) weight), or an .npz or .pt with 'weights' and optional
    'bias'; its arrays replace any weights and bias in ``path``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = _read_npz(path)
    elif suffix == ".pt":
        content = _load_pt(path)
        if isinstance(content, torch.Tensor):
            raise FeatureFileError(f"{path} contains a single tensor; save a dict with features, labels and weights")
        arrays = _pt_arrays(content, path)
    elif suffix == ".parquet":
        arrays = _read_parquet(path)
        if weights_path is None:
            raise FeatureFileError(f"{path} is a Parquet feature table; pass the classifier weight with --weights FILE")
    else:
        raise FeatureFileError(
            f"unsupported file extension '{path.suffix}' for {path}; use one of {', '.join(FEATURE_SUFFIXES)}"
        )

    source = str(path)
    if weights_path is not None:
        weights_path = Path(weights_path)
        arrays.pop("bias", None)
        arrays.update(_read_weights(weights_path))
        source = f"{path} with weights from {weights_path}"
    return check_arrays(arrays, source)
