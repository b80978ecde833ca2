"""v2.0 recordings convert in one step (LeRobot needs an older release first, issue #2858): stats
computed from scratch, and each quirk of NVIDIA GR00T's v2.0 recording handled and reported, or
refused with a typed error naming the setting that accepts it."""

import json

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dorobot_assets.defs import checks
from dorobot_assets.defs.convert import convert_recording
from dorobot_assets.lib import stats as S
from dorobot_assets.lib.data import write_data
from dorobot_assets.lib.episodes import read_episodes
from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.synthetic import CameraSpec
from dorobot_assets.lib.v21 import read_episode_data, read_recording
from dorobot_assets.lib.v30 import QUANTILE_KEYS, QUANTILES
from dorobot_assets_tests.conftest import shared_dataset

GR00T_CAMERA = "observation.images.ego_view"
GR00T_EMPTY_CAMERA = "observation.images.egoview"


def test_v20_recording_with_offset_timestamps_is_read_rebased_and_gets_fresh_stats(make_sample, tmp_path):
    src = make_sample("old", lengths=[20, 33], fps=20, codebase_version="v2.0", timestamp_offset_frames=1,
                      cameras=[CameraSpec("observation.images.top", "h264")])
    assert not (src / "meta/episodes_stats.jsonl").exists()
    rec = read_recording(src)
    assert rec.version == "v2.0" and rec.episodes_stats is None
    assert [e.timestamp_offset for e in rec.episodes] == pytest.approx([0.05, 0.05])
    assert any("v2.0" in n and "computed from the data" in n for n in rec.notes)
    assert any("timestamps of 2 of 2 episodes start at 0.05 s" in n for n in rec.notes)

    source_ts = pq.read_table(rec.episodes[1].data_path).column("timestamp").to_numpy()
    published = read_episode_data(rec, 1, ["timestamp"]).column("timestamp")
    assert source_ts[0] == np.float32(0.05), "the source is left as it is"
    assert published.type == pa.float32()
    assert published.to_numpy().tolist() == (np.arange(33) / 20).astype(np.float32).tolist()

    write_data(rec, tmp_path / "out", 100.0)
    written = pq.read_table(tmp_path / "out/data/chunk-000/file-000.parquet")
    assert written.column("timestamp").to_numpy()[:3].tolist() == pytest.approx([0.0, 0.05, 0.1])

    table, extra = S.compute_episode_stats(rec, tmp_path / "work")
    assert extra["episodes_computed"] == 2
    assert table.column(S.stats_column("timestamp", "min")).to_pylist() == [[0.0], [0.0]]
    assert table.column(S.stats_column("observation.images.top", "count")).to_pylist() == [[20], [33]]


def test_gr00t_declared_camera_without_files_is_refused_naming_the_setting():
    src = shared_dataset("gr00t_picknplace_v20")
    with pytest.raises(RecordingError) as e:
        read_recording(src)
    assert e.value.code == "missing_video_file" and GR00T_EMPTY_CAMERA in e.value.fault
    assert "missing_cameras=drop" in e.value.fault


@pytest.fixture(scope="module")
def gr00t(tmp_path_factory):
    src = shared_dataset("gr00t_picknplace_v20")
    out = tmp_path_factory.mktemp("gr00t") / "out"
    run = convert_recording(src, out, ConversionSettings(missing_cameras="drop"))
    assert run.success, run.error
    return src, out, run


def test_gr00t_converts_with_every_quirk_reported(gr00t):
    _, out, run = gr00t
    (event,) = run.result.asset_materializations_for_node("info")
    notes = event.metadata["source_notes"].value
    for quirk in (f"camera '{GR00T_EMPTY_CAMERA}' is declared in info.json but has no mp4 files",
                  "codebase_version v2.0", f"camera '{GR00T_CAMERA}' describes its stream under 'video_info'",
                  "no frame_index column", "timestamps of 5 of 5 episodes start at 0.05 s",
                  "total_chunks 0 (files: 1); total_videos 2 (files: 5); splits train '0:100' (files: '0:5')"):
        assert quirk in notes, quirk
    info = json.loads((out / "meta/info.json").read_text())
    assert (info["codebase_version"], info["total_episodes"], info["total_frames"]) == ("v3.0", 5, 2096)
    assert GR00T_EMPTY_CAMERA not in info["features"] and "frame_index" not in info["features"]
    assert "info" in info["features"][GR00T_CAMERA] and "video_info" not in info["features"][GR00T_CAMERA]
    outcomes = {name: r["passed"] for e in run.result.get_asset_check_evaluations()
                for name, r in checks.lib_check_results(e).items()}
    assert outcomes["stats_quantiles_exact"] is True


def test_gr00t_rebased_timestamps_find_every_frame_in_the_converted_video(gr00t):
    _, out, _ = gr00t
    data = pa.concat_tables(pq.read_table(p, columns=["episode_index", "timestamp"]) for p in sorted(out.glob("data/*/*.parquet")))
    episodes = read_episodes(out).to_pylist()
    (video,) = sorted(out.glob(f"videos/{GR00T_CAMERA}/*/*.mp4"))
    with av.open(str(video)) as c:
        stream = c.streams.video[0]
        pts = np.sort([float(p.pts * stream.time_base) for p in c.demux(stream) if p.pts is not None])
    assert len(pts) == data.num_rows == 2096
    starts = {e["episode_index"]: e[f"videos/{GR00T_CAMERA}/from_timestamp"] for e in episodes}
    query = np.array([starts[e] for e in data.column("episode_index").to_pylist()]) + data.column("timestamp").to_numpy()
    # LeRobot's reader takes the frame nearest to from_timestamp + timestamp within 1e-4 s (notes §5)
    assert np.max(np.abs(pts - query)) <= 1e-4


def test_gr00t_stats_are_computed_from_scratch_with_the_datasets_quantiles(gr00t):
    src, out, _ = gr00t
    stats = json.loads((out / "meta/stats.json").read_text())
    data = pa.concat_tables(pq.read_table(p) for p in sorted(src.glob("data/*/*.parquet")))
    for feature in ("observation.state", "action", "next.reward", "annotation.human.validity"):
        values = np.asarray(data.column(feature).to_pylist(), np.float64).reshape(data.num_rows, -1)
        np.testing.assert_allclose(np.ravel(stats[feature]["mean"]), values.mean(axis=0), rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.ravel(stats[feature]["std"]), values.std(axis=0), rtol=0, atol=1e-9)
        one_bin = (values.max(axis=0) - values.min(axis=0)) / S.HISTOGRAM_BINS
        for j, key in enumerate(QUANTILE_KEYS):
            exact = np.quantile(values, QUANTILES[j], axis=0)
            assert np.all(np.abs(np.ravel(stats[feature][key]) - exact) <= one_bin + 1e-12), (feature, key)
    assert stats["next.done"]["max"] == [1] and stats["timestamp"]["min"] == [0.0]
    assert stats[GR00T_CAMERA]["count"] == [500]  # 100 sampled frames of each 328..470-frame episode
    assert np.shape(stats[GR00T_CAMERA]["q50"]) == (3, 1, 1)


def test_gr00t_output_passes_deep_validation_without_a_frame_index_column(gr00t):
    from dorobot_assets.lib.validate import DatasetView, run_check

    _, out, _ = gr00t
    view = DatasetView.open(out)
    result = run_check("video_pts_alignment", view)
    assert result.passed, result.description
    assert result.description.startswith("2096 frames align")
