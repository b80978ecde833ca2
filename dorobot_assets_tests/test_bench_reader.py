"""Reader and writer speed-ups found with the benchmark (issue 8) give the same results as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dorobot_assets.lib import data as data_lib
from dorobot_assets.lib import arrow, synthetic, v21
from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.fsutil import stat_fingerprint, tree_files
from dorobot_assets.lib.v30 import resolve_inside


def _touch_later(path) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_recording_fingerprint_equals_the_path_based_one(tmp_path):
    root = synthetic.make_recording(tmp_path / "rec", lengths=[5, 6], cameras=synthetic.demo_cameras())
    # Names whose order differs as strings ("meta-x" < "meta/...") and as path parts.
    (root / "meta-x").write_text("x")
    (root / "meta" / "a b.json").write_text("{}")
    (root / ".tmp-leftover-file").write_text("ignored")
    assert v21.recording_fingerprint(root) == stat_fingerprint(tree_files(root), root)


def test_fingerprint_is_that_of_the_files_as_read(tmp_path):
    root = synthetic.make_recording(tmp_path / "rec", lengths=[5, 6])
    cache = tmp_path / "cache"
    rec = v21.read_recording_cached(root, cache)
    assert rec.fingerprint() == v21.recording_fingerprint(root)
    assert v21.read_recording_cached(root, cache) is rec  # the same model, no unpickling
    _touch_later(root / "meta" / "tasks.jsonl")
    assert rec.fingerprint() != v21.recording_fingerprint(root)  # the model knows what it read
    fresh = v21.read_recording_cached(root, cache)
    assert fresh is not rec and fresh.fingerprint() == v21.recording_fingerprint(root)


def test_episode_paths_resolve_as_before(tmp_path):
    root = synthetic.make_recording(tmp_path / "rec", lengths=[5, 6, 7], cameras=synthetic.demo_cameras()[:1])
    # Episode 1's mp4 is a symlink to a file elsewhere in the recording: it resolves to the target.
    video = root / "videos/chunk-000/observation.images.top"
    (root / "store").mkdir()
    os.replace(video / "episode_000001.mp4", root / "store" / "e1.mp4")
    os.symlink(root / "store" / "e1.mp4", video / "episode_000001.mp4")
    rec = v21.read_recording(root)
    for ep in rec.episodes:  # what a plain resolve_inside of each formatted template gives
        assert ep.data_path == resolve_inside(root, rec.info["data_path"].format(episode_chunk=0, episode_index=ep.index))
        rel = rec.info["video_path"].format(episode_chunk=0, episode_index=ep.index, video_key="observation.images.top")
        assert ep.video_paths["observation.images.top"] == resolve_inside(root, rel)
    assert rec.episodes[1].video_paths["observation.images.top"] == (root / "store" / "e1.mp4").resolve()
    # A symlink that leaves the recording is refused, as before.
    outside = tmp_path / "outside.mp4"
    os.replace(root / "store" / "e1.mp4", outside)
    os.remove(video / "episode_000001.mp4")
    os.symlink(outside, video / "episode_000001.mp4")
    with pytest.raises(ValueError):
        v21.read_recording(root)


def test_episode_stats_are_parsed_on_access(tmp_path):
    root = synthetic.make_recording(tmp_path / "rec", lengths=[5, 6, 7])
    rec = v21.read_recording(root)
    lines = [json.loads(t) for t in (root / "meta" / "episodes_stats.jsonl").read_text().splitlines()]
    stats = rec.episodes_stats
    assert len(stats) == 3 and list(stats) == [r["stats"] for r in lines]
    assert stats[-1] == lines[2]["stats"] and stats[1:] == [r["stats"] for r in lines[1:]]
    stats[0]["action"]["min"] = "changed"  # a copy: the model is not changed
    assert rec.episodes_stats[0] == lines[0]["stats"]


def _read_refusal(root):
    with pytest.raises(RecordingError) as err:
        v21.read_recording(root)
    return err.value


def test_episode_stats_read_by_arrow_or_python_give_the_same_model(tmp_path):
    root = synthetic.make_recording(tmp_path / "rec", lengths=[5, 6, 7], shuffle_jsonl=True)
    path = root / "meta" / "episodes_stats.jsonl"
    lines = path.read_text().splitlines()
    expected = sorted((json.loads(line) for line in lines), key=lambda r: r["episode_index"])
    assert list(v21.read_recording(root).episodes_stats) == [r["stats"] for r in expected]
    # Spellings Python's json reads and Arrow's parser refuses take the Python path: same model.
    nan_line = json.dumps({"episode_index": 1, "stats": {"x": {"min": [float("nan")], "max": [1e999]}}})
    assert "NaN" in nan_line and "Infinity" in nan_line
    others = [line for line in lines if json.loads(line)["episode_index"] != 1]
    path.write_text("\r\n".join([nan_line, *others]) + "\r\n\r\n")
    stats = v21.read_recording(root).episodes_stats
    assert stats[0] == expected[0]["stats"] and stats[2] == expected[2]["stats"]
    assert stats[1]["x"]["max"] == [float("inf")] and np.isnan(stats[1]["x"]["min"][0])
    # An object spread over two lines parses as JSON but not as JSON lines: refused as before.
    path.write_text("\n".join(lines[:2] + [lines[2].replace(', "stats"', ',\n "stats"')]) + "\n")
    err = _read_refusal(root)
    assert err.code == "stats_unparsable" and "line 3 is not valid JSON" in err.fault
    # A line without stats.
    path.write_text("\n".join(lines[:2] + ['{"episode_index": 2}']) + "\n")
    err = _read_refusal(root)
    assert err.code == "stats_unparsable" and err.fault == "line 3 lacks stats"


@pytest.mark.parametrize("statistics", [True, False])
def test_key_columns_are_checked_with_or_without_footer_statistics(tmp_path, statistics):
    root = synthetic.make_recording(tmp_path / "rec", lengths=[5, 6])
    path = root / "data/chunk-000/episode_000001.parquet"
    table = pq.read_table(path)

    def rewrite(column, values):
        i = table.schema.get_field_index(column)
        pq.write_table(table.set_column(i, column, pa.array(values, pa.int64())), path, write_statistics=statistics)

    rewrite("episode_index", [1] * 6)
    assert v21.read_recording(root).episodes[1].length == 6
    rewrite("episode_index", [1, 1, 1, 0, 1, 1])
    err = _read_refusal(root)
    assert err.code == "episode_index_mismatch" and err.fault == "row 3 has episode_index 0, the file belongs to episode 1"
    rewrite("task_index", [0, 1, 2, 1, 0, 1])
    err = _read_refusal(root)
    assert err.code == "unknown_task_index" and "task_index values [2]" in err.fault
    rewrite("task_index", [1] * 6)
    assert v21.read_recording(root).total_frames == 11


def test_data_row_groups_hold_whole_episodes_with_the_source_values(tmp_path, monkeypatch):
    root = synthetic.make_recording(tmp_path / "rec", lengths=[40, 35, 50, 45, 30], timestamp_offset_frames=1)
    rec = v21.read_recording(root)
    one_episode = pq.ParquetFile(rec.episodes[0].data_path).read().nbytes
    monkeypatch.setattr(data_lib, "ROW_GROUP_BYTES", int(2.5 * one_episode))  # ~2 episodes a group
    result = data_lib.write_data(rec, tmp_path / "out", 100.0)
    (path,) = result.files
    parquet = pq.ParquetFile(path)
    assert [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)] == [75, 95, 30]
    assert parquet.schema_arrow.equals(rec.data_schema, check_metadata=True)
    written = parquet.read()
    for ep in rec.episodes:
        begin, end = (result.placements.column(c)[ep.index].as_py() for c in ("dataset_from_index", "dataset_to_index"))
        source = pq.read_table(ep.data_path)
        got = written.slice(begin, end - begin)
        for name in source.column_names:
            if name != "timestamp":
                assert got.column(name).equals(source.column(name)), name
        # Timestamps that started at one frame period are published from 0 (v21.read_episode_data).
        expected = (np.arange(ep.length) / 30).astype(np.float32)
        np.testing.assert_array_equal(got.column("timestamp").to_numpy(), expected)
    encodings = parquet.metadata.row_group(0).column(0).encodings
    assert "RLE_DICTIONARY" not in encodings  # numeric columns: no dictionary to build and drop


def test_arrow_helpers_match_pyarrow():
    ints = [3, None, -(2**62), 0]
    assert arrow.int64_array(ints).equals(pa.array(ints, pa.int64()))
    floats = [0.5, None, float("inf"), -0.0]
    assert arrow.float64_array(floats).equals(pa.array(floats, pa.float64()))
    texts = ["pick", None, "", "gréifer ✓"]
    assert arrow.string_array(texts).equals(pa.array(texts, pa.string()))
    lists = [["a", "b"], [], ["ç"], ["x", None]]
    assert arrow.string_list_array(lists).equals(pa.array(lists, pa.list_(pa.string())))
    with pytest.raises(pa.ArrowTypeError):
        arrow.string_array(["a", 1])
    chunked = pa.chunked_array([pa.array([1, 2, 3], pa.int32()).slice(1), pa.array([7], pa.int32())])
    np.testing.assert_array_equal(arrow.column_numpy(chunked), np.array([2, 3, 7], np.int32))
    assert arrow.column_numpy(pa.chunked_array([pa.array([1.5, None])])).tolist()[0] == 1.5  # nulls: to_numpy


def test_reading_and_writing_data_audio_tasks_episodes_never_imports_pandas(tmp_path):
    """pyarrow imports pandas (0.5 s, 30 MiB) on pa.array/to_numpy/read_table when it is installed."""
    root = synthetic.make_recording(
        tmp_path / "rec", lengths=[5, 6], mics=[synthetic.MicSpec("observation.audio.left", 16000, missing_episodes=[1])],
    )
    program = f"""
import sys
from pathlib import Path
from dorobot_assets.lib import audio, data, episodes, tasks, v21
from dorobot_assets.lib.settings import ConversionSettings
rec = v21.read_recording_cached({str(root)!r}, {str(tmp_path / "cache")!r})
out = Path({str(tmp_path / "out")!r})
placements = data.write_data(rec, out, 100.0).placements
sound = audio.write_audio(rec, out, ConversionSettings()).placements
tasks.write_tasks(rec.tasks, out)
episodes.write_episodes(episodes.build_episodes_table(rec, placements, [("audio", sound)]), out)
print(sorted(m for m in sys.modules if m == "pandas" or m.startswith("pandas.")))
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    table = pq.read_table(tmp_path / "out/meta/episodes/chunk-000/file-000.parquet")
    assert table.column("audio/observation.audio.left/file_index").to_pylist() == [0, None]
    assert table.column("tasks").type == pa.list_(pa.string())


def test_list_helpers_match_pyarrow_on_lists_fixed_size_lists_and_slices():
    lists = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float64()))
    fixed = pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int64(), 2))
    for arr in (lists, fixed, lists.slice(1, 2), fixed.slice(1, 2), lists.slice(0, 0)):
        assert arrow.list_values(arr).equals(arr.flatten())
    nested = arrow.nested_list_array(np.arange(12, dtype=np.float64).reshape(2, 3, 2, 1), pa.float64())
    assert nested.type == pa.list_(pa.list_(pa.list_(pa.float64())))
    np.testing.assert_array_equal(arrow.nested_list_numpy(nested), np.arange(12).reshape(2, 3, 2, 1))
    assert arrow.nested_list_numpy(pa.array([[1.0], [2.0, 3.0]])) is None  # ragged: callers fall back
    # bit-packed booleans, in an array or a chunked column, go through Arrow's own conversion
    np.testing.assert_array_equal(arrow.column_numpy(pa.array([True, False, True])), [True, False, True])
    np.testing.assert_array_equal(arrow.column_numpy(pa.chunked_array([[True], [False]])), [True, False])
