"""lib/v21.py: the model it builds and one test per input fault it must refuse (typed, with the file)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.synthetic import CameraSpec
from dorobot_assets.lib.v21 import read_recording


def edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def edit_jsonl(path, fn):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = fn(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def rewrite_parquet(path, fn):
    table = pq.read_table(path)
    pq.write_table(fn(table), path)


def refused(root, code):
    with pytest.raises(RecordingError) as exc:
        read_recording(root)
    assert exc.value.code == code, str(exc.value)
    return exc.value


def test_reads_model_sorted_from_out_of_order_jsonl(make_sample):
    rec_dir = make_sample("rec", lengths=[12, 15, 9], shuffle_jsonl=True, chunks_size=2)
    rec = read_recording(rec_dir)
    assert [e.index for e in rec.episodes] == [0, 1, 2]
    assert [e.length for e in rec.episodes] == [12, 15, 9]
    assert rec.total_frames == 36
    assert rec.tasks == ["pick up the cube", "place the cube in the bowl"]
    # chunks_size 2: episode 2 lives in chunk-001 (DoRobot uses 10000, LeRobot 1000)
    assert rec.episodes[2].data_path == rec_dir / "data/chunk-001/episode_000002.parquet"
    assert [s["frame_index"]["max"] for s in rec.episodes_stats] == [[11], [14], [8]]
    assert rec.column_features == [
        "observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index"
    ]
    assert rec.episodes[0].data_uncompressed_bytes > 0


def test_missing_info_json(make_sample):
    root = make_sample("rec", lengths=[5])
    (root / "meta/info.json").unlink()
    err = refused(root, "info_missing")
    assert err.path == root / "meta/info.json"


def test_unparsable_info_json(make_sample):
    root = make_sample("rec", lengths=[5])
    (root / "meta/info.json").write_text("{not json")
    assert "not valid JSON" in str(refused(root, "info_unparsable"))


@pytest.mark.parametrize("version", ["v3.0", "v1.6", None])
def test_version_not_v2(make_sample, version):
    root = make_sample("rec", lengths=[5])
    edit_json(root / "meta/info.json", lambda d: d.update(codebase_version=version))
    err = refused(root, "unsupported_version")
    assert "only v2.x" in err.fault


def test_missing_data_file(make_sample):
    root = make_sample("rec", lengths=[5, 6])
    victim = root / "data/chunk-000/episode_000001.parquet"
    victim.unlink()
    err = refused(root, "missing_data_file")
    assert err.path == victim and "episode 1" in err.fault


def test_episode_indices_not_contiguous(make_sample):
    root = make_sample("rec", lengths=[5, 6, 7])
    edit_jsonl(root / "meta/episodes.jsonl", lambda rows: [r for r in rows if r["episode_index"] != 1])
    err = refused(root, "episodes_not_contiguous")
    assert "episode 1 is missing" in err.fault


def test_length_differs_from_parquet_rows(make_sample):
    root = make_sample("rec", lengths=[5, 6])
    edit_jsonl(root / "meta/episodes.jsonl", lambda rows: [dict(r, length=99) if r["episode_index"] == 1 else r for r in rows])
    err = refused(root, "length_mismatch")
    assert "has 6 rows" in err.fault and "length 99" in err.fault
    assert err.path.name == "episode_000001.parquet"


def test_parquet_column_not_declared(make_sample):
    root = make_sample("rec", lengths=[5])
    path = root / "data/chunk-000/episode_000000.parquet"
    rewrite_parquet(path, lambda t: t.append_column("gripper", pa.array([0.0] * 5)))
    err = refused(root, "columns_mismatch")
    assert "not declared in info.json features: ['gripper']" in err.fault


def test_declared_feature_without_column(make_sample):
    root = make_sample("rec", lengths=[5])
    edit_json(root / "meta/info.json", lambda d: d["features"].update(
        {"observation.effort": {"dtype": "float32", "shape": [6], "names": None}}))
    err = refused(root, "columns_mismatch")
    assert "declared in info.json features but absent: ['observation.effort']" in err.fault


def test_index_not_contiguous_across_episodes(make_sample):
    root = make_sample("rec", lengths=[5, 6])
    path = root / "data/chunk-000/episode_000001.parquet"
    rewrite_parquet(path, lambda t: t.set_column(t.schema.get_field_index("index"), "index",
                                                 pa.array(range(100, 106), pa.int64())))
    err = refused(root, "index_not_contiguous")
    assert "continue from 5" in err.fault and "has 100" in err.fault


def test_task_index_absent_from_tasks(make_sample):
    root = make_sample("rec", lengths=[5])
    path = root / "data/chunk-000/episode_000000.parquet"
    rewrite_parquet(path, lambda t: t.set_column(t.schema.get_field_index("task_index"), "task_index",
                                                 pa.array([7] * 5, pa.int64())))
    err = refused(root, "unknown_task_index")
    assert "[7]" in err.fault and "2 tasks" in err.fault


def test_feature_name_with_slash(make_sample):
    root = make_sample("rec", lengths=[5])

    def rename(d):
        d["features"]["observation/state"] = d["features"].pop("observation.state")

    edit_json(root / "meta/info.json", rename)
    err = refused(root, "bad_feature_name")
    assert "'observation/state'" in err.fault


@pytest.mark.parametrize("template", [
    "../outside/episode_{episode_index:06d}.parquet",
    "/etc/episode_{episode_index:06d}.parquet",
    "data/../../episode_{episode_index:06d}.parquet",
])
def test_path_template_escaping_recording(make_sample, template):
    root = make_sample("rec", lengths=[5])
    edit_json(root / "meta/info.json", lambda d: d.update(data_path=template))
    err = refused(root, "unsafe_path")
    assert err.path == root / "meta/info.json"


def test_episode_index_column_disagrees_with_file(make_sample):
    root = make_sample("rec", lengths=[5, 5])
    path = root / "data/chunk-000/episode_000001.parquet"
    rewrite_parquet(path, lambda t: t.set_column(t.schema.get_field_index("episode_index"), "episode_index",
                                                 pa.array([0] * 5, pa.int64())))
    assert "belongs to episode 1" in refused(root, "episode_index_mismatch").fault


def test_tasks_with_gap(make_sample):
    root = make_sample("rec", lengths=[5])
    edit_jsonl(root / "meta/tasks.jsonl", lambda rows: [dict(r, task_index=r["task_index"] * 2) for r in rows])
    refused(root, "tasks_not_contiguous")


def test_camera_missing_for_one_episode_is_refused_even_with_drop(make_sample):
    root = make_sample("cam", lengths=[5, 5], cameras=[CameraSpec("observation.images.top", "h264")])
    victim = root / "videos/chunk-000/observation.images.top/episode_000001.mp4"
    victim.unlink()
    err = refused(root, "missing_video_file")
    assert err.path == victim and "1 of 2 episodes" in err.fault
    with pytest.raises(RecordingError, match="1 of 2 episodes"):
        read_recording(root, missing_cameras="drop")


def test_camera_without_any_file_can_be_dropped(make_sample):
    root = make_sample("cam", lengths=[5, 5], cameras=[CameraSpec("observation.images.top", "h264")])
    for p in (root / "videos").rglob("*.mp4"):
        p.unlink()
    assert "missing_cameras=drop" in refused(root, "missing_video_file").fault
    rec = read_recording(root, missing_cameras="drop")
    assert rec.video_keys == [] and rec.dropped_features == ["observation.images.top"]
    assert "no mp4 files" in rec.notes[0]


def test_real_partial_recording_without_videos_is_refused_by_default():
    from dorobot_assets_tests.conftest import shared_dataset

    root = shared_dataset("g1_inspire_v21_partial")
    err = refused(root, "missing_video_file")
    assert "100 of 100 episodes" in err.fault and "observation.images.cam_high" in err.fault


def test_data_file_not_listed_in_episodes_jsonl(make_sample):
    root = make_sample("rec", lengths=[5, 6])
    edit_jsonl(root / "meta/episodes.jsonl", lambda rows: [r for r in rows if r["episode_index"] == 0])
    edit_jsonl(root / "meta/episodes_stats.jsonl", lambda rows: [r for r in rows if r["episode_index"] == 0])
    err = refused(root, "unlisted_data_file")
    assert err.path == root / "data/chunk-000/episode_000001.parquet"
    assert "not listed in meta/episodes.jsonl (1 episodes)" in err.fault


def test_stats_lines_are_read_again_when_used_and_checked_again(make_sample):
    """The model does not hold episodes_stats.jsonl (4 MiB at 2000 episodes); the copy reads it
    again, and a file changed since read_recording fails the same check."""
    from dorobot_assets.lib.stats import copy_source_stats

    src = make_sample("rec", lengths=[5, 6])
    rec = read_recording(src)
    assert copy_source_stats(rec).num_rows == 2
    path = src / "meta/episodes_stats.jsonl"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(RecordingError) as err:
        copy_source_stats(rec)
    assert (err.value.code, err.value.path, err.value.fault) == (
        "stats_mismatch", path, "has stats for 1 episodes, episodes.jsonl lists 2")
