"""Recomputed statistics: LeRobot's histogram quantiles per episode, mergeable value bins for the
dataset's quantiles, per-episode caching, and typed errors for data that has no statistics."""

import json
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


def _quantile_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [
        rng.normal(size=300),
        rng.normal(size=2),  # two rows: the smallest histogram that is read
        np.array([3.0, 3.0, 3.0]),  # constant: a range of 2e-10 around the value
        rng.integers(0, 4, size=57).astype(np.float64),  # ties: several values per bin
        1.7e9 + rng.uniform(0, 1e-6, size=40),  # tiny range at a large magnitude: equal edges
        np.full(9, 1.7e9),  # constant at a large magnitude: all edges equal
        rng.normal(size=123).astype(np.float32).astype(np.float64) * 1e-8,
        -np.abs(rng.standard_cauchy(size=250)),  # heavy tail: most values in a few bins
    ]


@pytest.mark.parametrize("case", range(len(_quantile_cases())))
def test_vectorised_quantiles_equal_lerobots_histogram_bit_for_bit(case):
    x = _quantile_cases()[case]
    ours = S.numeric_stats(x.reshape(-1, 1), (1,))
    np.testing.assert_array_equal(np.concatenate([ours[k] for k in QUANTILE_KEYS]), S.lerobot_quantiles(x))


def test_vectorised_pixel_quantiles_equal_lerobots_weighted_histogram_bit_for_bit():
    rng = np.random.default_rng(5)
    counts = np.zeros((3, 256), np.int64)
    counts[0, rng.integers(0, 256, 40)] = rng.integers(1, 1000, 40)
    counts[1, 17] = 5000  # a single level
    counts[2, [0, 255]] = [1, 1]  # two pixels, the full range
    s = S.pixel_stats(counts, frames=3)
    levels = np.arange(256, dtype=np.float64)
    for c in range(3):
        present = np.flatnonzero(counts[c])
        reference = S.lerobot_quantiles(levels[present], counts[c, present].astype(np.float64)) / 255
        np.testing.assert_array_equal([s[k][c, 0, 0] for k in QUANTILE_KEYS], reference)


def test_segments_of_one_call_get_the_stats_each_would_get_alone():
    rng = np.random.default_rng(2)
    lengths = [5, 1, 40, 2]
    state = rng.normal(size=(sum(lengths), 3)).astype(np.float32)
    index = np.arange(sum(lengths), dtype=np.int64).reshape(-1, 1)
    together, values = S.segment_stats([state, index], [(3,), ()], np.array(lengths))
    assert values.shape == (4, sum(lengths))
    start = 0
    for e, n in enumerate(lengths):
        for f, (m, shape) in enumerate([(state, (3,)), (index, ())]):
            alone = S.numeric_stats(m[start:start + n], shape)
            for key, value in alone.items():
                assert together[f][key][e].dtype == value.dtype
                np.testing.assert_array_equal(together[f][key][e], value, err_msg=f"segment {e} {key}")
        start += n
    assert together[1]["min"][:, 0].tolist() == [0, 5, 6, 46] and together[1]["count"][:, 0].tolist() == lengths


def test_grid_bins_filled_in_chunks_equal_each_dimensions_bins_on_its_final_grid():
    rng = np.random.default_rng(4)
    values = np.stack([rng.normal(size=300), np.full(300, 7.0), rng.integers(0, 9, size=300).astype(np.float64),
                       np.r_[np.full(100, 2.5), rng.uniform(-50, 50, size=200)]])  # constant at first
    bins = S.GridBins()
    for part in (slice(0, 100), slice(100, 101), slice(101, 300)):  # ranges widen chunk by chunk
        bins.add(values[:, part])
    count, vmin, vmax, offsets = bins.bins()
    assert offsets[0] == 0 and offsets[-1] == len(count) and offsets[2] - offsets[1] == 1
    for d, x in enumerate(values):
        part = slice(offsets[d], offsets[d + 1])
        if d == 1:  # constant: one bin
            assert (count[part].tolist(), vmin[part].tolist(), vmax[part].tolist()) == ([300], [7.0], [7.0])
            continue
        cell = np.floor(np.ldexp(x, -S.grid_exponent(np.ptp(x), np.abs(x).max())))
        cells = np.unique(cell)
        assert count[part].tolist() == [int((cell == c).sum()) for c in cells]
        assert vmin[part].tolist() == [x[cell == c].min() for c in cells]
        assert vmax[part].tolist() == [x[cell == c].max() for c in cells]


def test_grid_bins_keep_a_constant_dimension_of_huge_values_in_its_own_bin():
    # a constant beyond 2**53 (a nanosecond clock): bins were once numbered across dimensions in
    # float64, where it rounded into the previous dimension's bins
    values = np.stack([np.arange(50, dtype=np.float64), np.full(50, 1.5987981398101793e18)])
    bins = S.GridBins()
    bins.add(values[:, :20] + 1000)
    bins.clear()  # reused for other values, with shared buffers
    bins.add(values, S.ChunkBuffers(0, 50))
    count, vmin, vmax, offsets = bins.bins()
    assert offsets.tolist() == [0, 50, 51] and count.tolist() == [1] * 50 + [50]
    assert vmin.tolist() == vmax.tolist() == values[0].tolist() + [values[1, 0]]


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


def test_a_bad_value_read_with_other_episodes_is_named_with_its_own_file_and_row(make_sample, tmp_path):
    src = make_sample("bad", lengths=[12, 15, 9])
    path = src / "data/chunk-000/episode_000001.parquet"
    table = pq.read_table(path)
    state = table.column("observation.state").to_pylist()
    state[4][2] = float("inf")
    i = table.column_names.index("observation.state")
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(state, table.schema.field(i).type)), path)
    work = tmp_path / "work"
    with pytest.raises(RecordingError) as e:
        S.compute_episode_stats(read_recording(src), work)
    assert e.value.code == "non_finite_values" and e.value.path == path
    assert "'observation.state' row 4 dimension 2 is inf" in e.value.fault
    assert not (work / S.STATS_CACHE_DIR / S.STATS_INDEX_FILE).exists(), "no index of stats that were not made"


def test_an_empty_episode_is_refused_naming_its_data_file(make_sample, tmp_path):
    rec = read_recording(make_sample("empty", lengths=[12, 15]))
    rec.episodes[1].length = 0
    with pytest.raises(RecordingError) as e:
        S.compute_episode_stats(rec, tmp_path / "work")
    assert e.value.code == "empty_episode" and e.value.path == rec.episodes[1].data_path
    assert not (tmp_path / "work").exists(), "refused before anything is written"


def test_stats_workers_setting_counts_processes():
    from dorobot_assets.lib.errors import ConfigError
    from dorobot_assets.lib.settings import DEFAULT_STATS_WORKERS, ConversionSettings

    assert ConversionSettings().stats_workers == DEFAULT_STATS_WORKERS == (os.cpu_count() or 1)
    with pytest.raises(ConfigError, match="stats_workers must be >= 1"):
        ConversionSettings(stats_workers=0)


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
    assert extra["numeric_groups_read"] == 1, "the changed episode's group is read again for its value bins"
    cache = work / S.STATS_CACHE_DIR
    index = json.loads((cache / S.STATS_INDEX_FILE).read_text())
    listed = {index["episodes_file"], *index["numeric_files"], *index["camera_files"]}
    assert {p.name for p in cache.glob("*.npz")} == listed, "stale cache entries are removed"

    _, extra = S.compute_episode_stats(read_recording(src), work)
    assert (extra["episodes_computed"], extra["numeric_groups_read"]) == (0, 0), "nothing changed: nothing read"


def test_value_bins_made_in_groups_and_chunks_merge_to_the_same_quantiles(make_sample, tmp_path, monkeypatch):
    src = make_sample("groups", lengths=[30, 25, 40, 35, 20], extra_float_features=["gripper"])
    rec = read_recording(src)
    one, extra = S.compute_episode_stats(rec, tmp_path / "one")
    assert extra["numeric_groups_read"] == 1
    monkeypatch.setattr(S, "NUMERIC_GROUP_EPISODES", 2)
    monkeypatch.setattr(S, "NUMERIC_CHUNK_VALUES", 1)  # every episode a chunk of its own
    many, extra = S.compute_episode_stats(rec, tmp_path / "many")
    assert extra["numeric_groups_read"] == 3
    assert many.equals(one), "per-episode stats do not depend on which episodes are computed together"
    q_one, q_many = S.dataset_quantiles(tmp_path / "one"), S.dataset_quantiles(tmp_path / "many")
    for feature, qs in q_one.items():
        for key, value in qs.items():
            np.testing.assert_array_equal(q_many[feature][key], value, err_msg=f"{feature} {key}")


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
