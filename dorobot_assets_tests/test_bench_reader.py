"""Reader speed-ups found with the benchmark (issue 8) give the same results as before."""

from __future__ import annotations

import json
import os

import pytest

from dorobot_assets.lib import synthetic, v21
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
