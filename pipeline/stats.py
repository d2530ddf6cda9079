"""Streaming per-class sufficient statistics of last-layer features (counts, class
means, pooled within-class scatter) in float64, from which the NC metrics are computed.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

STATE_KEYS = ("counts", "means", "scatter")
"""Keys of :meth:`ClassStats.state_dict`."""

DEFAULT_CHUNK_ROWS = 8192
"""Rows converted to float64 at a time by :meth:`ClassStats.from_features`."""


def _merge_moments(
    counts_a: torch.Tensor,
    means_a: torch.Tensor,
    scatter_a: torch.Tensor,
    counts_b: torch.Tensor,
    means_b: torch.Tensor,
    scatter_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Combine two sets of per-class moments with the parallel-variance formula.

    For each class k with n = n_a + n_b > 0 and delta = mean_b - mean_a:
    mean = mean_a + delta * n_b / n, and the pooled scatter gains
    n_a * n_b / n * delta delta^T on top of scatter_a + scatter_b. Every term is
    built from centred quantities, so a large common offset in the features does
    not cancel catastrophically. Classes with n = 0 keep a zero mean.
    """
    counts = counts_a + counts_b
    total = counts.to(torch.float64)
    safe_total = total.clamp(min=1.0)
    n_a = counts_a.to(torch.float64)
    n_b = counts_b.to(torch.float64)

    delta = means_b - means_a
    means = means_a + delta * (n_b / safe_total)[:, None]
    pair_weight = n_a * n_b / safe_total
    scatter = scatter_a + scatter_b + (delta * pair_weight[:, None]).T @ delta
    return counts, means, scatter


class ClassStats:
    """Per-class counts, class means and pooled within-class scatter of features.

    The state is ``counts`` (K,) int64, ``means`` (K, p) float64 and ``scatter``
    (p, p) float64, the sum over all samples of (h_n - mu_{y_n})(h_n - mu_{y_n})^T.
    It lives on one device: ``device`` when given, otherwise CPU until the first
    non-empty batch, whose device it then keeps. Later batches on another device
    are copied to the state's device.
    The full feature matrix is never stored, and memory is O(K p + p^2).

    Each batch is centred on its own class means and folded in with the
    parallel-variance (Chan et al.) merge, so features with a large common
    offset give the same statistics as centred ones, up to rounding of the inputs.
    """

    def __init__(self, num_classes: int, dim: int, device: torch.device | str | None = None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self._device_fixed = device is not None
        state_device = torch.device(device) if device is not None else torch.device("cpu")
        self._counts = torch.zeros(self.num_classes, dtype=torch.int64, device=state_device)
        self._means = torch.zeros(self.num_classes, self.dim, dtype=torch.float64, device=state_device)
        self._scatter = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=state_device)

    def __repr__(self) -> str:
        return (
            f"ClassStats(num_classes={self.num_classes}, dim={self.dim}, "
            f"total_count={self.total_count}, device={self.device})"
        )

    # -- accessors ---------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Device of the state tensors."""
        return self._counts.device

    @property
    def counts(self) -> torch.Tensor:
        """Samples seen per class, a (K,) int64 tensor (a copy)."""
        return self._counts.clone()

    @property
    def total_count(self) -> int:
        """Samples seen over all classes (N)."""
        return int(self._counts.sum().item())

    def means(self) -> torch.Tensor:
        """Return the class means mu_k as a (K, p) float64 tensor; a class without samples has a zero row."""
        return self._means.clone()

    def scatter(self) -> torch.Tensor:
        """Return the pooled within-class scatter N * Sigma_W as a (p, p) float64 tensor."""
        return self._scatter.clone()

    def within_covariance(self) -> torch.Tensor:
        """Return Sigma_W = scatter / N, normalised by the total sample count N.

        With no samples seen the result is all NaN and a warning is logged.
        """
        total = self.total_count
        if total == 0:
            logger.warning("statistic=within_covariance result=nan reason=no_samples")
            return torch.full_like(self._scatter, float("nan"))
        return self._scatter / total

    # -- accumulation ------------------------------------------------------------

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of features (B, p) of any float dtype with integer labels (B,) in 0..K-1.

        The batch is converted to float64 on the state's device. An empty batch is a
        no-op. Raises ValueError or TypeError for wrong shapes, dtypes or labels out
        of range. NaN features are accumulated, not rejected, so that the metrics of a
        diverged run come out NaN instead of raising.
        """
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        if not features.is_floating_point():
            raise TypeError(f"features must have a floating-point dtype, got {features.dtype}")
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(
                f"features must have shape (batch, {self.dim}), got {tuple(features.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(
                f"labels must have shape ({features.shape[0]},) to match features, got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
        if features.shape[0] == 0:
            return

        if not self._device_fixed:
            # The state follows the first non-empty batch, then stays on that device.
            self._move_state(features.device)
            self._device_fixed = True
        device = self.device
        batch = features.detach().to(device=device, dtype=torch.float64)
        labels = labels.detach().to(device=device, dtype=torch.int64)

        # One host synchronisation per batch, which keeps index_add_ from writing out of bounds.
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            low, high = int(labels.min()), int(labels.max())
            raise ValueError(
                f"labels must lie in 0..{self.num_classes - 1}, got values from {low} to {high}"
            )

        batch_counts = torch.bincount(labels, minlength=self.num_classes)
        batch_sums = torch.zeros_like(self._means).index_add_(0, labels, batch)
        batch_means = batch_sums / batch_counts.clamp(min=1).to(torch.float64)[:, None]
        if batch.data_ptr() == features.data_ptr():
            centred = batch - batch_means[labels]
        else:
            # The float64 copy is private to this call, so it is centred in place.
            centred = batch.sub_(batch_means[labels])

        # The parallel-variance merge of _merge_moments, written with in-place addmm_ so
        # that no p x p temporary is allocated. The cost is O(B p^2 + K p^2) per batch.
        n_a = self._counts.to(torch.float64)
        n_b = batch_counts.to(torch.float64)
        total = (n_a + n_b).clamp(min=1.0)
        delta = batch_means - self._means
        self._scatter.addmm_(centred.T, centred)
        self._scatter.addmm_((delta * (n_a * n_b / total)[:, None]).T, delta)
        self._means.add_(delta * (n_b / total)[:, None])
        self._counts.add_(batch_counts)

    def merge(self, other: ClassStats) -> ClassStats:
        """Return a new ClassStats with the statistics of both inputs, which stay unchanged.

        The result lives on this object's device. Merging shards in any order gives
        the statistics of one pass over all samples, up to float64 rounding.
        """
        if not isinstance(other, ClassStats):
            raise TypeError(f"can only merge ClassStats, got {type(other).__name__}")
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(
                "cannot merge ClassStats of different shapes: "
                f"(num_classes={self.num_classes}, dim={self.dim}) and "
                f"(num_classes={other.num_classes}, dim={other.dim})"
            )
        device = self.device
        merged = ClassStats(self.num_classes, self.dim, device=device)
        merged._device_fixed = self._device_fixed
        merged._counts, merged._means, merged._scatter = _merge_moments(
            self._counts,
            self._means,
            self._scatter,
            other._counts.to(device),
            other._means.to(device),
            other._scatter.to(device),
        )
        return merged

    def _move_state(self, device: torch.device) -> None:
        self._counts = self._counts.to(device)
        self._means = self._means.to(device)
        self._scatter = self._scatter.to(device)

    # -- serialisation -----------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the state as CPU tensors, savable with torch.save and loadable with weights_only=True."""
        return {
            "counts": self._counts.detach().cpu().clone(),
            "means": self._means.detach().cpu().clone(),
            "scatter": self._scatter.detach().cpu().clone(),
        }

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], device: torch.device | str | None = None
    ) -> ClassStats:
        """Rebuild a ClassStats from :meth:`state_dict` output.

        The state lives on ``device``. When that is None, it stays on the CPU until
        the first update moves it to the batch's device.

        Raises ValueError naming the key when a key is missing or a shape does not fit.
        """
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(
                f"ClassStats state is missing {', '.join(missing)}; expected the keys {', '.join(STATE_KEYS)}"
            )
        counts = torch.as_tensor(state["counts"])
        means = torch.as_tensor(state["means"])
        scatter = torch.as_tensor(state["scatter"])
        if counts.dim() != 1:
            raise ValueError(f"ClassStats state 'counts' must be 1-D, got shape {tuple(counts.shape)}")
        num_classes = counts.shape[0]
        if means.dim() != 2 or means.shape[0] != num_classes:
            raise ValueError(
                f"ClassStats state 'means' must have shape ({num_classes}, dim), got {tuple(means.shape)}"
            )
        dim = means.shape[1]
        if tuple(scatter.shape) != (dim, dim):
            raise ValueError(
                f"ClassStats state 'scatter' must have shape ({dim}, {dim}), got {tuple(scatter.shape)}"
            )
        if counts.dtype.is_floating_point or bool((counts < 0).any()):
            raise ValueError("ClassStats state 'counts' must contain non-negative integers")

        stats = cls(num_classes, dim, device=device)
        stats._device_fixed = device is not None
        target = stats.device
        stats._counts = counts.to(device=target, dtype=torch.int64).clone()
        stats._means = means.to(device=target, dtype=torch.float64).clone()
        stats._scatter = scatter.to(device=target, dtype=torch.float64).clone()
        return stats

    @classmethod
    def from_features(
        cls,
        features: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        num_classes: int,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> ClassStats:
        """Accumulate the statistics of a full feature matrix (N, p), ``chunk_rows`` rows at a time.

        Numpy arrays are accepted and wrapped without a copy. The state lives on the
        device of ``features``. Chunking bounds the float64 working copy to
        ``chunk_rows * p`` values.
        """
        features = torch.as_tensor(features)
        labels = torch.as_tensor(labels)
        if features.dim() != 2:
            raise ValueError(f"features must be 2-D (N, p), got shape {tuple(features.shape)}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        stats = cls(num_classes, features.shape[1])
        if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(
                f"labels must have shape ({features.shape[0]},) to match features, got {tuple(labels.shape)}"
            )
        for start in range(0, features.shape[0], chunk_rows):
            stats.update(features[start : start + chunk_rows], labels[start : start + chunk_rows])
        return stats
