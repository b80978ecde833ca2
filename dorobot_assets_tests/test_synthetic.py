"""Synthetic recordings are spec-conformant v2.1 recordings made the way the recorders make them."""

import json

import av
import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from dorobot_assets.lib import synthetic
from dorobot_assets.lib.synthetic import CameraSpec, MicSpec
from dorobot_assets.lib.v21 import read_recording


def test_cameras_audio_and_stats_follow_the_recorders(make_sample):
    root = make_sample(
        "rich", lengths=[30, 120], cameras=synthetic.demo_cameras(),
        mics=[MicSpec("observation.audio.left", 16000)],
    )
    rec = read_recording(root)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["dorobot_dataset_version"] == "v1.0"
    assert info["features"]["observation.audio.left"] == {"dtype": "audio", "shape": [1], "names": None}
    assert rec.video_keys == ["observation.images.top", "observation.images.wrist"]

    # AV1 (libsvtav1, key frame every 2 frames) and all-intra H.264, 1/15360 time base
    with av.open(str(rec.episodes[1].video_paths["observation.images.top"])) as c:
        s = c.streams.video[0]
        keys = [p.is_keyframe for p in c.demux(s) if p.size]
        assert s.codec_context.name in ("libdav1d", "av1") and len(keys) == 120
        assert float(s.duration * s.time_base) == 4.0
    assert sum(keys) >= 60
    with av.open(str(rec.episodes[1].video_paths["observation.images.wrist"])) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264"
        assert all(p.is_keyframe for p in c.demux(s) if p.size)

    # WAV: PCM_16 mono, exactly length/fps seconds
    wav = rec.episodes[1].audio_paths["observation.audio.left"]
    meta = sf.info(str(wav))
    assert (meta.samplerate, meta.channels, meta.subtype, meta.frames) == (16000, 1, "PCM_16", 64000)

    # numeric stats as the recorder computes them: over every frame of the episode
    table = pq.read_table(rec.episodes[1].data_path)
    state = np.stack(table.column("observation.state").to_numpy(zero_copy_only=False))
    s = rec.episodes_stats[1]["observation.state"]
    assert np.allclose(s["mean"], state.mean(axis=0)) and np.allclose(s["std"], state.std(axis=0))
    assert s["count"] == [120]
    # camera stats: LeRobot samples 100 frames of a 120-frame episode; values in [0, 1], (3, 1, 1)
    cam = rec.episodes_stats[1]["observation.images.top"]
    assert cam["count"] == [100] and np.asarray(cam["mean"]).shape == (3, 1, 1)
    assert synthetic.estimate_num_samples(1000) == 177 and synthetic.estimate_num_samples(50) == 50


def test_per_episode_overrides_and_missing_wavs(make_sample):
    root = make_sample(
        "mixed", lengths=[10, 10],
        cameras=[CameraSpec("observation.images.top", "h264", overrides={1: {"codec": "av1", "width": 80}})],
        mics=[MicSpec("observation.audio.m", 48000, missing_episodes=[0])],
    )
    rec = read_recording(root)
    with av.open(str(rec.episodes[1].video_paths["observation.images.top"])) as c:
        assert c.streams.video[0].codec_context.width == 80
    assert not rec.episodes[0].audio_paths["observation.audio.m"].exists()
    assert rec.episodes[1].audio_paths["observation.audio.m"].exists()
