"""Tests of the streaming class statistics in pipeline.stats."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from tests.dense_reference import class_means, within_covariance
from pipeline.stats import ClassStats


def make_features(num_samples: int, dim: int, num_classes: int, seed: int, *, spread: float = 3.0):
    """Return seeded float64 features with class structure, labels covering every class."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    labels[:num_classes] = torch.arange(num_classes)
    centres = spread * torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    features = centres[labels] + torch.randn(num_samples, dim, generator=generator, dtype=torch.float64)
    return features, labels


def test_stats_match_dense_moments():
    features, labels = make_features(500, 7, 4, seed=0)
    stats = ClassStats.from_features(features, labels, 4)

    means = class_means(features.numpy(), labels.numpy(), 4)
    expected_counts = np.bincount(labels.numpy(), minlength=4)
    np.testing.assert_array_equal(stats.counts.numpy(), expected_counts)
    assert stats.counts.dtype == torch.int64
    assert stats.total_count == 500
    np.testing.assert_allclose(stats.means().numpy(), means, rtol=1e-12)
    np.testing.assert_allclose(
        stats.within_covariance().numpy(), within_covariance(features.numpy(), labels.numpy(), means), rtol=1e-11
    )
    assert stats.means().dtype == torch.float64
    assert stats.within_covariance().dtype == torch.float64


def test_stats_streaming_equals_one_shot():
    features, labels = make_features(1000, 9, 5, seed=1)
    one_shot = ClassStats.from_features(features, labels, 5, chunk_rows=1000)
    streamed = ClassStats(5, 9)
    for start in range(0, 1000, 7):
        streamed.update(features[start : start + 7], labels[start : start + 7])

    np.testing.assert_array_equal(streamed.counts.numpy(), one_shot.counts.numpy())
    np.testing.assert_allclose(streamed.means().numpy(), one_shot.means().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(streamed.scatter().numpy(), one_shot.scatter().numpy(), rtol=1e-11, atol=1e-10)


def test_stats_merge_shards_equals_one_pass():
    features, labels = make_features(900, 6, 3, seed=2)
    one_pass = ClassStats.from_features(features, labels, 3)
    shards = [ClassStats.from_features(features[i : i + 300], labels[i : i + 300], 3) for i in (0, 300, 600)]

    merged = shards[0].merge(shards[1]).merge(shards[2])
    np.testing.assert_array_equal(merged.counts.numpy(), one_pass.counts.numpy())
    np.testing.assert_allclose(merged.means().numpy(), one_pass.means().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(merged.scatter().numpy(), one_pass.scatter().numpy(), rtol=1e-11, atol=1e-10)


def test_stats_merge_leaves_inputs_unchanged():
    features, labels = make_features(200, 4, 3, seed=3)
    first = ClassStats.from_features(features[:100], labels[:100], 3)
    second = ClassStats.from_features(features[100:], labels[100:], 3)
    before = first.state_dict()

    merged = first.merge(second)
    assert merged is not first
    assert first.total_count == 100
    torch.testing.assert_close(first.state_dict()["scatter"], before["scatter"], rtol=0, atol=0)
    assert merged.total_count == 200


def test_stats_merge_with_empty_shard():
    features, labels = make_features(120, 4, 3, seed=4)
    stats = ClassStats.from_features(features, labels, 3)
    merged = ClassStats(3, 4).merge(stats)
    torch.testing.assert_close(merged.scatter(), stats.scatter(), rtol=1e-14, atol=0)
    torch.testing.assert_close(merged.means(), stats.means(), rtol=1e-14, atol=0)


def test_stats_merge_rejects_other_shape():
    with pytest.raises(ValueError, match="different shapes"):
        ClassStats(3, 4).merge(ClassStats(3, 5))


def test_stats_offset_float32_stable():
    features, labels = make_features(4000, 16, 5, seed=5)
    shifted = (features + 1e3).float()
    # The same float32 values without the offset; the subtraction is exact in float64.
    centred = ClassStats.from_features(shifted.double() - 1e3, labels, 5)
    streamed = ClassStats(5, 16)
    for start in range(0, 4000, 250):
        streamed.update(shifted[start : start + 250], labels[start : start + 250])

    np.testing.assert_allclose(streamed.means().numpy() - 1e3, centred.means().numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        streamed.within_covariance().numpy(), centred.within_covariance().numpy(), rtol=1e-6, atol=1e-9
    )


def test_stats_large_offset_float64_stable():
    features, labels = make_features(3000, 8, 4, seed=6)
    centred = ClassStats.from_features(features, labels, 4, chunk_rows=100)
    shifted = ClassStats.from_features(features + 1e7, labels, 4, chunk_rows=100)
    # sum(h h^T) - N mu mu^T would cancel 14 of float64's 16 digits at this offset.
    np.testing.assert_allclose(
        shifted.within_covariance().numpy(), centred.within_covariance().numpy(), rtol=1e-6, atol=1e-6
    )


def test_stats_state_dict_round_trip_through_torch_save():
    features, labels = make_features(300, 5, 3, seed=7)
    stats = ClassStats.from_features(features, labels, 3)
    buffer = io.BytesIO()
    torch.save(stats.state_dict(), buffer)
    buffer.seek(0)
    restored = ClassStats.from_state_dict(torch.load(buffer, weights_only=True))

    assert set(stats.state_dict()) == {"counts", "means", "scatter"}
    assert all(tensor.device.type == "cpu" for tensor in stats.state_dict().values())
    torch.testing.assert_close(restored.counts, stats.counts, rtol=0, atol=0)
    torch.testing.assert_close(restored.means(), stats.means(), rtol=0, atol=0)
    torch.testing.assert_close(restored.scatter(), stats.scatter(), rtol=0, atol=0)

    restored.update(features[:10], labels[:10])
    assert restored.total_count == 310


def test_stats_from_state_dict_rejects_missing_key():
    state = ClassStats(3, 2).state_dict()
    del state["scatter"]
    with pytest.raises(ValueError, match="missing scatter"):
        ClassStats.from_state_dict(state)


def test_stats_from_state_dict_rejects_bad_shape():
    state = ClassStats(3, 2).state_dict()
    state["scatter"] = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'scatter' must have shape \(2, 2\)"):
        ClassStats.from_state_dict(state)


def test_stats_update_accepts_half_precision():
    features, labels = make_features(64, 4, 2, seed=8)
    stats = ClassStats(2, 4)
    stats.update(features.to(torch.bfloat16), labels)
    reference = ClassStats.from_features(features.to(torch.bfloat16).double(), labels, 2)
    torch.testing.assert_close(stats.scatter(), reference.scatter(), rtol=1e-12, atol=1e-12)


def test_stats_update_rejects_labels_out_of_range():
    stats = ClassStats(3, 2)
    with pytest.raises(ValueError, match=r"labels must lie in 0..2, got values from 0 to 3"):
        stats.update(torch.zeros(2, 2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels must lie in 0..2, got values from -1 to 1"):
        stats.update(torch.zeros(2, 2), torch.tensor([-1, 1]))
    assert stats.total_count == 0


def test_stats_update_rejects_bad_shapes_and_dtypes():
    stats = ClassStats(3, 2)
    with pytest.raises(ValueError, match=r"features must have shape \(batch, 2\)"):
        stats.update(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        stats.update(torch.zeros(4, 2), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer dtype"):
        stats.update(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(TypeError, match="floating-point dtype"):
        stats.update(torch.zeros(4, 2, dtype=torch.int64), torch.zeros(4, dtype=torch.int64))


def test_stats_constructor_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        ClassStats(1, 4)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        ClassStats(3, 0)


def test_stats_empty_batch_is_noop():
    stats = ClassStats(3, 2)
    stats.update(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))
    assert stats.total_count == 0


def test_stats_without_samples_gives_nan_covariance(caplog):
    covariance = ClassStats(3, 2).within_covariance()
    assert torch.isnan(covariance).all()
    assert "reason=no_samples" in caplog.text


def test_stats_empty_class_keeps_zero_mean():
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    stats = ClassStats.from_features(features, torch.tensor([0, 0]), 3)
    np.testing.assert_array_equal(stats.counts.numpy(), [2, 0, 0])
    np.testing.assert_allclose(stats.means().numpy(), [[2.0, 3.0], [0.0, 0.0], [0.0, 0.0]])
    # Scatter of class 0 about (2, 3): two deviations (-1, -1) and (1, 1).
    np.testing.assert_allclose(stats.scatter().numpy(), [[2.0, 2.0], [2.0, 2.0]])


def test_stats_from_features_accepts_numpy():
    features, labels = make_features(50, 3, 2, seed=9)
    from_numpy = ClassStats.from_features(features.numpy(), labels.numpy(), 2)
    from_torch = ClassStats.from_features(features, labels, 2)
    torch.testing.assert_close(from_numpy.scatter(), from_torch.scatter(), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stats_cuda_matches_cpu():
    features, labels = make_features(2000, 32, 10, seed=10)
    on_cpu = ClassStats.from_features(features.float(), labels, 10, chunk_rows=300)
    on_cuda = ClassStats.from_features(features.float().cuda(), labels.cuda(), 10, chunk_rows=300)
    assert on_cuda.device.type == "cuda"
    torch.testing.assert_close(on_cuda.scatter().cpu(), on_cpu.scatter(), rtol=1e-10, atol=1e-9)
    merged = on_cpu.merge(on_cuda)
    assert merged.device.type == "cpu"
    assert merged.total_count == 4000
