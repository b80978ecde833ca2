"""Statistics through the asset graph: recompute is the default, meta/stats.json carries the
dataset's quantiles, re-materializing a grown recording computes only its new episodes, and the
checks compare quantiles with DuckDB and recomputed stats with the source's."""

import json
import shutil
from types import SimpleNamespace

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dorobot_assets.defs import checks
from dorobot_assets.defs.convert import convert_recording
from dorobot_assets.lib import stats as S
from dorobot_assets.lib import stats_checks
from dorobot_assets.lib.episodes import read_episodes
from dorobot_assets.lib.synthetic import CameraSpec, downsample, make_recording, sample_indices
from dorobot_assets.lib.v30 import QUANTILE_KEYS, QUANTILES
from dorobot_assets.lib.validate import DatasetView
from dorobot_assets_tests.test_stats import grow_recording, shrink_recording

CAMERAS = [CameraSpec("observation.images.top", "av1"), CameraSpec("observation.images.wrist", "h264")]
TAMPERED = (1, "observation.state", "mean", 2)  # episode, feature, stat, element edited in the source


def tamper(src):
    """Hand-edit one number of the source's per-episode stats, as a careless user might."""
    path = src / "meta/episodes_stats.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    episode, feature, stat, element = TAMPERED
    rows[episode]["stats"][feature][stat][element] += 0.5
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def metadata(run, asset: str) -> dict:
    (event,) = run.result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in event.metadata.items()}


def check_outcomes(run) -> dict[str, bool]:
    """Each lib check's pass/fail, from the assets' validation checks."""
    return {name: r["passed"] for e in run.result.get_asset_check_evaluations()
            for name, r in checks.lib_check_results(e).items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-episode recording converted, then grown to 4 episodes and converted again."""
    base = tmp_path_factory.mktemp("stats_convert")
    full = make_recording(base / "full", lengths=[70, 45, 110, 60], cameras=CAMERAS, extra_float_features=["gripper"])
    src = shrink_recording(full, base / "rec", keep=3)
    tamper(src)
    out = base / "out"
    first = convert_recording(src, out)
    assert first.success, first.error
    first_meta = metadata(first, "episode_stats")
    first_checks = check_outcomes(first)
    grow_recording(full, src)
    tamper(src)
    second = convert_recording(src, out)
    assert second.success, second.error
    return SimpleNamespace(src=src, out=out, first=first_meta, first_checks=first_checks, second=second)


def test_regrown_recording_recomputes_only_its_new_episode(runs):
    assert runs.first["mode"] == "recompute"
    assert (runs.first["episodes_computed"], runs.first["episodes_reused"]) == (3, 0)
    second = metadata(runs.second, "episode_stats")
    assert (second["episodes_computed"], second["episodes_reused"]) == (1, 3)
    assert metadata(runs.second, "dataset_stats")["quantiles"] is True


def test_stats_json_numeric_quantiles_are_within_one_bin_of_numpy_over_all_frames(runs):
    stats = json.loads((runs.out / "meta/stats.json").read_text())
    data = pa.concat_tables(pq.read_table(p) for p in sorted(runs.out.glob("data/*/*.parquet")))
    assert data.num_rows == 285
    for feature in ("observation.state", "action", "gripper", "timestamp", "frame_index", "episode_index", "index"):
        values = np.asarray(data.column(feature).to_pylist(), np.float64).reshape(data.num_rows, -1)
        exact = np.quantile(values, QUANTILES, axis=0)
        one_bin = (values.max(axis=0) - values.min(axis=0)) / S.HISTOGRAM_BINS
        for j, key in enumerate(QUANTILE_KEYS):
            ours = np.asarray(stats[feature][key], np.float64)
            assert ours.shape == exact[j].shape
            assert np.all(np.abs(ours - exact[j]) <= one_bin + 1e-12), (feature, key, ours, exact[j])


def test_stats_json_camera_quantiles_are_those_of_all_sampled_pixels(runs):
    stats = json.loads((runs.out / "meta/stats.json").read_text())
    for cam in CAMERAS:
        pixels = []
        for path in sorted(runs.src.glob(f"videos/chunk-000/{cam.key}/episode_*.mp4")):
            with av.open(str(path)) as c:
                frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            pixels += [downsample(frames[i]).reshape(-1, 3) for i in sample_indices(len(frames))]
        unit = np.concatenate(pixels).astype(np.float64) / 255
        for key, q in zip(QUANTILE_KEYS, QUANTILES):
            np.testing.assert_allclose(np.ravel(stats[cam.key][key]), np.quantile(unit, q, axis=0), atol=1e-9)
        assert stats[cam.key]["count"] == [70 + 45 + 100 + 60]  # frames sampled, LeRobot's rule


def test_meta_episodes_carry_quantile_columns(runs):
    table = read_episodes(runs.out)
    for feature in ("observation.state", "observation.images.top", "index"):
        for stat in S.ALL_STAT_KEYS:
            assert S.stats_column(feature, stat) in table.column_names
    assert table.column(S.stats_column("observation.images.top", "count")).to_pylist() == [[70], [45], [100], [60]]


def test_conversion_runs_the_stats_checks_and_warns_about_the_edited_source(runs):
    assert runs.first_checks["stats_quantiles_exact"] is True
    assert runs.first_checks["stats_match_source"] is False  # a warning: the conversion still succeeded
    assert check_outcomes(runs.second)["stats_match_source"] is False
    view = DatasetView(root=runs.out, info=json.loads((runs.out / "meta/info.json").read_text()), source=runs.src)
    result = stats_checks.stats_match_source(view)
    episode, feature, stat, element = TAMPERED
    assert not result.passed and f"episode {episode} {feature}" in result.description
    # only the edited number differs: decoded cameras agree with the recorder's within tolerance
    assert [(o["episode_index"], o["feature"], o["stat"], o["element"]) for o in result.offending] == [TAMPERED]
    assert result.counts["features_compared"] == 4 * 10  # 4 episodes x 10 features


def test_quantile_check_fails_a_stats_json_more_than_one_bin_off(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs.out, copy)
    info = json.loads((copy / "meta/info.json").read_text())
    stats_path = copy / "meta/stats.json"
    stats = json.loads(stats_path.read_text())
    one_bin = (np.asarray(stats["action"]["max"]) - np.asarray(stats["action"]["min"])) / S.HISTOGRAM_BINS

    assert stats_checks.stats_quantiles_exact(DatasetView(root=copy, info=info)).passed
    stats["action"]["q50"][1] += 3 * one_bin[1]
    stats_path.write_text(json.dumps(stats))
    result = stats_checks.stats_quantiles_exact(DatasetView(root=copy, info=info))
    assert not result.passed and "action[1] q50" in result.description
    assert [(o["feature"], o["dimension"], o["quantile"]) for o in result.offending] == [("action", 1, "q50")]

    for feature in stats:  # stats copied from a v2.1 source have no quantiles: nothing to compare
        for key in QUANTILE_KEYS:
            stats[feature].pop(key)
    stats_path.write_text(json.dumps(stats))
    assert not stats_checks.stats_quantiles_exact(DatasetView(root=copy, info=info)).applicable


def test_quantile_check_from_counts_decides_as_the_sorted_values_do(runs, tmp_path):
    """Each quantile moved by a chosen fraction of its allowance: the check (streaming counts,
    and the two order statistics around a bound where counts cannot decide) fails exactly those
    moved by more than one allowance, as comparing with numpy's sorted quantile does."""
    copy = tmp_path / "copy"
    shutil.copytree(runs.out, copy)
    info = json.loads((copy / "meta/info.json").read_text())
    stats_path = copy / "meta/stats.json"
    original = stats_path.read_text()
    data = pa.concat_tables(pq.read_table(p) for p in sorted(copy.glob("data/*/*.parquet")))
    fractions = iter([-1.5, -0.99, -0.5, 0.0, 0.5, 0.99, 1.5, -1.01, 1.01] * 10)
    # floats (one quantile key at a time: few enough findings to be listed); integers, where
    # x[r] and x[r+1] straddle the bounds; float32 timestamps in steps of 1/30
    cases = [("action", [key]) for key in QUANTILE_KEYS] + [(f, QUANTILE_KEYS) for f in ("frame_index", "index", "timestamp")]
    for feature, keys in cases:
        stats = json.loads(original)
        values = np.asarray(data.column(feature).to_pylist(), np.float64).reshape(data.num_rows, -1)
        exact = np.quantile(values, QUANTILES, axis=0)
        lo, hi = values.min(axis=0), values.max(axis=0)
        allowed = (hi - lo) / S.HISTOGRAM_BINS + 4 * np.finfo(np.float64).eps * np.maximum(np.maximum(abs(lo), abs(hi)), 1)
        expected = set()
        for key in keys:
            fraction = np.array([next(fractions) for _ in range(values.shape[1])])
            stats[feature][key] = (exact[QUANTILE_KEYS.index(key)] + fraction * allowed).tolist()
            expected |= {(feature, d, key) for d in np.flatnonzero(np.abs(fraction) > 1).tolist()}
        stats_path.write_text(json.dumps(stats))
        result = stats_checks.stats_quantiles_exact(DatasetView(root=copy, info=info))
        assert {(o["feature"], o["dimension"], o["quantile"]) for o in result.offending} == expected, (feature, keys)
        assert result.counts["offending"] == len(expected) and result.passed == (not expected)


def test_source_comparison_reports_the_worst_element_a_shape_and_a_count():
    ours = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    found = stats_checks._differences("mean", False, [[1.0, 2.0, 3.0], [4.0, 5.5, 6.2], [7.0, 8.0]], ours)
    assert sorted(found, key=lambda f: f[0]) == [
        (1, {"stat": "mean", "element": 1, "source": 5.5, "recomputed": 5.0}),  # 0.5 off is worse than 0.2
        (2, {"stat": "mean", "element": None, "source": "shape (2,)", "recomputed": "shape (3,)"}),
    ]
    assert stats_checks._differences("std", False, [[1.00001, 2.0, 3.0]], ours[:1]) == []  # within 1e-4 relative
    camera = np.full((1, 3), 0.5)
    assert stats_checks._differences("mean", True, [[[[0.51]], [[0.5]], [[0.485]]]], camera) == []  # within 0.02
    assert stats_checks._differences("count", False, [[100], [7]], np.array([[100.0], [8.0]])) == [
        (1, {"stat": "count", "element": 0, "source": 7, "recomputed": 8})]
