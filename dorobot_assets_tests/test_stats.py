"""Recomputed statistics: LeRobot's histogram quantiles per episode, mergeable value bins for the
dataset's quantiles, per-episode caching, and typed errors for data that has no statistics."""

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dorobot_assets.lib import stats as S
from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.v21 import Feature, read_recording
from dorobot_assets.lib.v30 import QUANTILE_KEYS, QUANTILES


def test_histogram_quantiles_follow_lerobots_reading_rule():
    # 4 values in bins [0,1) [1,2) [2,3) with counts 1, 2, 1
    hist, edges = np.array([1.0, 2.0, 1.0]), np.array([0.0, 1.0, 2.0, 3.0])
    q01, q10, q50, q90, q99 = S.histogram_quantiles(hist, edges)
    assert q01 == 0.0 and q10 == 0.0  # target within bin 0: its lower edge, no interpolation
    assert q50 == pytest.approx(1.5)  # target 2: bin 1, halfway through its 2 values
    assert q90 == pytest.approx(2.6)  # target 3.6: bin 2, 0.6 of its single value
    assert q99 == pytest.approx(2.96)


def test_episode_quantiles_read_the_bin_of_the_ceil_qn_th_value_and_stay_inside_min_max():
    x = np.random.default_rng(1).normal(size=1000)
    ours = S.lerobot_quantiles(x)
    ranked = np.sort(x)
    one_bin = (x.max() - x.min()) / S.HISTOGRAM_BINS
    for q, value in zip(QUANTILES, ours):
        # LeRobot's rule lands in the bin of the ceil(q·N)-th smallest value (not numpy's
        # interpolation between neighbours: that is what the dataset quantiles do)
        assert abs(value - ranked[int(np.ceil(q * len(x))) - 1]) <= one_bin
    assert ours[0] >= x.min() and ours[-1] <= x.max()  # LeRobot's padded edges are clamped away


def test_numeric_stats_keep_integer_extremes_and_compute_in_float64():
    frame_index = np.arange(7, dtype=np.int64).reshape(-1, 1)
    s = S.numeric_stats(frame_index, (1,))
    assert s["min"].dtype == np.int64 and s["min"].tolist() == [0] and s["max"].tolist() == [6]
    assert s["mean"].tolist() == [3.0] and s["std"][0] == pytest.approx(2.0)
    assert s["count"].tolist() == [7]
    assert [s[k].shape for k in QUANTILE_KEYS] == [(1,)] * 5

    # uint8 data whose squares would overflow in uint8 arithmetic (LeRobot bug #3697)
    pixels = np.array([[200], [250], [255], [240]], np.uint8)
    s = S.numeric_stats(pixels, (1,))
    assert s["mean"][0] == pytest.approx(236.25) and s["std"][0] == pytest.approx(np.std([200, 250, 255, 240]))

    vector = np.array([[1.0, 5.0, -2.0]], np.float32)  # one row: every quantile is the mean (LeRobot's rule)
    s = S.numeric_stats(vector, (3,))
    assert s["q01"].tolist() == s["q99"].tolist() == [1.0, 5.0, -2.0] and s["std"].tolist() == [0, 0, 0]


def test_pixel_stats_are_per_channel_in_unit_range_with_sampled_frame_count():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(5000, 3)).astype(np.uint8)
    counts = np.stack([np.bincount(pixels[:, c], minlength=256) for c in range(3)])
    s = S.pixel_stats(counts, frames=17)
    unit = pixels.astype(np.float64) / 255
    for key, ref in [("min", unit.min(0)), ("max", unit.max(0)), ("mean", unit.mean(0)), ("std", unit.std(0))]:
        assert s[key].shape == (3, 1, 1)
        np.testing.assert_allclose(s[key].ravel(), ref, atol=1e-12)
    assert s["count"].tolist() == [17]
    np.testing.assert_allclose(s["q50"].ravel(), np.quantile(unit, 0.5, axis=0), atol=1 / 255)


def _merged_quantiles(parts: list[np.ndarray]) -> np.ndarray:
    lo, hi = min(p.min() for p in parts), max(p.max() for p in parts)
    merged = S.MergedBins(lo, hi)
    for p in parts:
        merged.add(*S.value_bins(p))
    return merged.quantiles()


@pytest.mark.parametrize("case", ["normal", "gap", "integers", "offset", "constant_episodes"])
def test_dataset_quantiles_from_merged_bins_are_within_one_bin_of_numpy(case):
    rng = np.random.default_rng(7)
    if case == "normal":  # episodes with different spreads and ranges
        parts = [rng.normal(i, 0.1 + i, size=n) for i, n in enumerate([40, 300, 25, 120])]
    elif case == "gap":  # few values and a wide gap: numpy interpolates across it, so must we
        parts = [np.array([0.0, 0.1, 0.2]), np.array([100.0, 100.5]), np.array([1000.0])]
    elif case == "integers":
        parts = [rng.integers(0, 6, size=n).astype(np.float64) for n in [30, 31, 50]]
    elif case == "offset":  # large magnitude, small spread (e.g. unix timestamps)
        parts = [1.7e9 + rng.uniform(0, 10, size=n) for n in [60, 90]]
    else:  # every episode constant (episode_index)
        parts = [np.full(n, float(i)) for i, n in enumerate([20, 35, 11])]
    values = np.concatenate(parts)
    ours = _merged_quantiles(parts)
    exact = np.quantile(values, QUANTILES)
    one_bin = (values.max() - values.min()) / S.HISTOGRAM_BINS
    assert np.all(np.abs(ours - exact) <= one_bin + 1e-15 * np.abs(values).max()), (ours, exact)
    if case in ("integers", "constant_episodes"):  # values alone in their bins: exact
        np.testing.assert_allclose(ours, exact, rtol=0, atol=1e-12)


def test_value_bins_are_exact_about_their_members():
    x = np.random.default_rng(3).normal(size=500)
    count, vmin, vmax = S.value_bins(x)
    assert count.sum() == 500 and vmin[0] == x.min() and vmax[-1] == x.max()
    width = 2.0 ** S.grid_exponent(x.max() - x.min(), np.abs(x).max())
    assert width <= (x.max() - x.min()) / S.HISTOGRAM_BINS
    assert np.all(np.floor(vmin / width) == np.floor(vmax / width)), "a bin's members share one grid cell"


def _column(values, typ) -> pa.ChunkedArray:
    return pa.chunked_array([pa.array(values, typ)])


def test_bad_numeric_columns_are_refused_with_the_file_and_the_fault(tmp_path):
    path = tmp_path / "episode_000000.parquet"
    with pytest.raises(RecordingError) as e:
        S.column_matrix(_column([[1.0, 2.0], [3.0]], pa.list_(pa.float32())), (2,), path, "action")
    assert e.value.code == "bad_vector_length" and e.value.path == path and "'action'" in e.value.fault
    with pytest.raises(RecordingError) as e:
        S.column_matrix(_column([[1.0, 2.0], [3.0, float("nan")]], pa.list_(pa.float32())), (2,), path, "action")
    assert e.value.code == "non_finite_values" and "row 1 dimension 1" in e.value.fault and "copy" in e.value.fault
    with pytest.raises(RecordingError) as e:
        S.column_matrix(_column([1.0, None], pa.float64()), (1,), path, "next.reward")
    assert e.value.code == "null_values"
    with pytest.raises(RecordingError) as e:
        S.column_matrix(_column([[1.0, 2.0, 3.0]], pa.list_(pa.float32())), (2,), path, "action")
    assert e.value.code == "bad_vector_length" and "needs 2 per row" in e.value.fault
    ok = S.column_matrix(_column([True, False, True], pa.bool_()), (1,), path, "next.done")
    assert ok.shape == (3, 1)


def shrink_recording(full: Path, dest: Path, keep: int) -> Path:
    """``full`` as it was when it had ``keep`` episodes (files keep their mtimes)."""
    shutil.copytree(full, dest)
    for p in list(dest.rglob("episode_*")):
        if int(p.stem.split("_")[1]) >= keep:
            p.unlink()
    for name in ("episodes.jsonl", "episodes_stats.jsonl"):
        lines = (full / "meta" / name).read_text().splitlines()
        (dest / "meta" / name).write_text("".join(line + "\n" for line in lines[:keep]))
    return dest


def grow_recording(full: Path, dest: Path) -> None:
    """``dest`` gains the episodes of ``full`` it lacks; the files it has stay untouched."""
    for p in full.rglob("*"):
        target = dest / p.relative_to(full)
        if p.is_file() and (not target.exists() or p.parent.name == "meta"):
            shutil.copy2(p, target)


def test_per_episode_stats_are_reused_and_only_new_or_changed_episodes_computed(make_sample, tmp_path):
    full = make_sample("grow", lengths=[30, 25, 40, 35, 20], extra_float_features=["gripper"])
    src = shrink_recording(full, tmp_path / "rec", keep=3)
    work = tmp_path / "work"

    table3, extra = S.compute_episode_stats(read_recording(src), work)
    assert extra["episodes_computed"] == 3 and extra["episodes_reused"] == 0

    grow_recording(full, src)
    table5, extra = S.compute_episode_stats(read_recording(src), work)
    assert extra["computed_episodes"] == [3, 4] and extra["episodes_reused"] == 3
    fresh, _ = S.compute_episode_stats(read_recording(src), tmp_path / "fresh")
    assert table5.equals(fresh), "reused episode stats equal freshly computed ones"
    assert table5.slice(0, 3).equals(table3)

    data = src / "data/chunk-000/episode_000001.parquet"
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))  # the recording changed
    _, extra = S.compute_episode_stats(read_recording(src), work)
    assert extra["computed_episodes"] == [1] and extra["episodes_reused"] == 4
    assert len(list((work / S.STATS_CACHE_DIR).glob("*.npz"))) == 5, "stale cache entries are removed"


def test_dataset_quantiles_of_a_recording_match_numpy_over_all_frames(make_sample, tmp_path):
    src = make_sample("quant", lengths=[23, 57, 31], extra_float_features=["gripper"])
    table, _ = S.compute_episode_stats(read_recording(src), tmp_path / "work")
    agg = S.aggregate(table, S.dataset_quantiles(tmp_path / "work"))
    data = pa.concat_tables(pq.read_table(p) for p in sorted(src.glob("data/*/*.parquet")))
    for feature in ("observation.state", "action", "gripper", "timestamp", "frame_index", "index"):
        values = np.asarray(data.column(feature).to_pylist(), np.float64).reshape(data.num_rows, -1)
        exact = np.quantile(values, QUANTILES, axis=0)
        one_bin = (values.max(axis=0) - values.min(axis=0)) / S.HISTOGRAM_BINS
        for j, key in enumerate(QUANTILE_KEYS):
            ours = np.asarray(agg[feature][key]).ravel()
            assert np.all(np.abs(ours - exact[j]) <= one_bin + 1e-12), (feature, key)
        assert np.asarray(agg[feature]["count"]).tolist() == [111]
    # the per-episode table carries LeRobot's ten stats per feature
    assert S.stats_column("action", "q99") in table.column_names


def test_copy_mode_keeps_source_stats_without_quantiles_and_v20_has_none_to_copy(make_sample):
    src = make_sample("copy", lengths=[12, 15])
    agg = S.aggregate(S.copy_source_stats(read_recording(src)))
    assert set(agg["action"]) == {"min", "max", "mean", "std", "count"}
    v20 = make_sample("old", lengths=[12, 15], codebase_version="v2.0")
    with pytest.raises(RecordingError) as e:
        S.copy_source_stats(read_recording(v20))
    assert e.value.code == "stats_missing" and "recompute" in e.value.fault


def test_image_columns_ask_for_copy_mode(make_sample):
    rec = read_recording(make_sample("img", lengths=[5]))
    rec.features["observation.images.front"] = Feature("observation.images.front", "image", (48, 64, 3), {})
    with pytest.raises(RecordingError) as e:
        S.stats_features(rec)
    assert e.value.code == "stats_unsupported" and "'observation.images.front'" in e.value.fault
    assert "stats mode 'copy'" in e.value.fault
