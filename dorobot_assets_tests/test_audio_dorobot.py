"""DoRobot metadata carry-over, with the real DoRobot so101 metadata where it is available."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa

from dorobot_assets.lib.dorobot import carry_over_meta
from dorobot_assets.lib.episodes import build_episodes_table
from dorobot_assets.lib.v21 import read_info, read_recording
from dorobot_assets.lib.v30 import build_info
from dorobot_assets_tests.conftest import shared_dataset

REAL = "dorobot_so101_meta_v21"
META_FILES = ("op_dataid.jsonl", "common_record.json")


def test_real_dorobot_meta_files_are_copied_byte_for_byte(tmp_path):
    real = shared_dataset(REAL)
    out = tmp_path / "out"
    written = carry_over_meta(real, out)
    assert [p.name for p in written] == list(META_FILES)
    for name in META_FILES:
        assert (out / "meta" / name).read_bytes() == (real / "meta" / name).read_bytes()
    assert sorted(p.name for p in (out / "meta").iterdir()) == sorted(META_FILES)  # no temp files left


def test_real_dataids_become_the_dataid_column(make_sample, tmp_path):
    real = shared_dataset(REAL)
    # The real recording has no parquet files; give its metadata a synthetic body of 6 episodes.
    src = make_sample("real_meta", lengths=[20, 21, 22, 23, 24, 25], dorobot=True)
    for name in META_FILES:
        shutil.copyfile(real / "meta" / name, src / "meta" / name)
    rec = read_recording(src)
    placements = pa.table({"episode_index": pa.array(range(6), pa.int64())})
    table = build_episodes_table(rec, placements)
    assert table.schema.field("dataid").type == pa.string()
    assert table.column("dataid").to_pylist() == ["001"] * 6
    out = tmp_path / "out"
    carry_over_meta(rec.root, out)
    assert json.loads((out / "meta/common_record.json").read_text()) == {
        "task_id": "fallback_task", "task_name": "so101-test-1"
    }


def test_real_dorobot_info_becomes_v1_1_without_audio_keys():
    info = build_info(
        read_info(shared_dataset(REAL)), total_episodes=6, total_frames=2193, total_tasks=1,
        data_file_size_mb=100, video_file_size_mb=200, audio_file_size_mb=100,
    )
    assert info["codebase_version"] == "v3.0"
    assert info["dorobot_dataset_version"] == "v1.1"
    assert info["audio_path"] is None  # null in the source, no microphones
    assert "audio_files_size_in_mb" not in info
    assert not [k for k, f in info["features"].items() if f["dtype"] == "audio"]


def test_recording_without_dorobot_meta_gets_none_and_loses_stale_copies(make_sample, tmp_path):
    src = make_sample("lerobot", lengths=[20, 21])
    out = tmp_path / "out"
    (out / "meta").mkdir(parents=True)
    for name in META_FILES:  # left by an earlier conversion of a DoRobot recording
        (out / "meta" / name).write_text("{}\n")
    assert carry_over_meta(src, out) == []
    assert list((out / "meta").iterdir()) == []
