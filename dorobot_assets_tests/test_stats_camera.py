"""Camera statistics from the source mp4s: LeRobot's frame sampling, frames decoded by seeking to
key frames (AV1 g=2, all-intra H.264, long-GOP H.264 with B-frames), each needed frame once."""

import av
import numpy as np
import pytest

from dorobot_assets.lib import camera_stats as C
from dorobot_assets.lib import stats as S
from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.synthetic import CameraSpec, camera_frame, downsample, encode_video, sample_indices
from dorobot_assets.lib.v21 import read_recording

LONG_GOP = {"g": "12", "bf": "2", "tune": None}  # B-frames, a key frame every 12 frames
CAMERAS = [
    CameraSpec("observation.images.top", "av1"),
    CameraSpec("observation.images.wrist", "h264"),
    CameraSpec("observation.images.side", "h264", encoder_options=LONG_GOP),
]


def all_frames(path) -> list[np.ndarray]:
    """Independent reference: every frame, decoded front to back without seeking."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_plan_seeks_to_the_last_key_frame_and_covers_each_needed_frame_once():
    runs = C.plan_decode(keyframes=[0, 12, 24, 36], needed=[3, 5, 20, 30, 31, 40], seek_cost_frames=2)
    assert runs == [C.DecodeRun(0, (3, 5)), C.DecodeRun(12, (20,)), C.DecodeRun(24, (30, 31)), C.DecodeRun(36, (40,))]
    # all-intra: every needed frame is its own key frame; neighbours closer than a seek share a run
    runs = C.plan_decode(keyframes=range(100), needed=[10, 11, 13, 50], seek_cost_frames=2)
    assert runs == [C.DecodeRun(10, (10, 11, 13)), C.DecodeRun(50, (50,))]
    runs = C.plan_decode(keyframes=range(0, 100, 2), needed=sample_indices(99), seek_cost_frames=0)
    assert sorted(f for r in runs for f in r.frames) == list(range(99))


@pytest.fixture
def cams(make_sample):
    return make_sample("cams", lengths=[120, 45], cameras=CAMERAS, fps=30)


@pytest.mark.parametrize("camera", [c.key for c in CAMERAS])
def test_seeking_decodes_exactly_the_needed_frames(cams, camera):
    path = cams / f"videos/chunk-000/{camera}/episode_000000.mp4"
    reference = all_frames(path)
    needed = [3, 17, 18, 64, 65, 101, 119]
    counts = C.DecodeCounts()
    got = list(C.decode_frames(path, needed, 120, counts))
    assert [i for i, _ in got] == needed
    for i, rgb in got:
        assert np.array_equal(rgb, reference[i]), f"frame {i} is not the frame at that position"
    assert counts.seeks == len(counts.runs) >= 4
    with av.open(str(path)) as container:
        keyframes = C.index_video(container, path).keyframes
    if camera.endswith("side"):
        assert keyframes == list(range(0, 120, 12)), "the long-GOP camera has few key frames"
    if camera.endswith("wrist"):  # all-intra: nothing but the needed frames is decoded
        assert counts.decoded == len(needed)
    else:
        assert counts.decoded < 120 / 2


def test_camera_episode_stats_match_numpy_on_the_same_sampled_frames(cams, tmp_path):
    rec = read_recording(cams)
    table, _ = S.compute_episode_stats(rec, tmp_path / "work")
    for e, ep in enumerate(rec.episodes):
        for cam in CAMERAS:
            frames = all_frames(ep.video_paths[cam.key])
            picks = sample_indices(ep.length)
            pixels = np.concatenate([downsample(frames[i]).reshape(-1, 3) for i in picks]).astype(np.float64) / 255
            row = {s: np.asarray(table.column(S.stats_column(cam.key, s))[e].as_py()) for s in S.ALL_STAT_KEYS}
            for stat, ref in [("min", pixels.min(0)), ("max", pixels.max(0)),
                              ("mean", pixels.mean(0)), ("std", pixels.std(0))]:
                assert row[stat].shape == (3, 1, 1)
                np.testing.assert_allclose(row[stat].ravel(), ref, rtol=0, atol=1e-6, err_msg=f"{cam.key} {stat}")
            assert row["count"].tolist() == [len(picks)] == [min(ep.length, 100)]
            for key, q in zip(S.QUANTILE_KEYS, S.QUANTILES):  # histogram quantiles: within one pixel level
                np.testing.assert_allclose(row[key].ravel(), np.quantile(pixels, q, axis=0), atol=1 / 255)


def test_video_shorter_than_its_episode_is_refused_naming_the_mp4(cams, tmp_path):
    path = cams / "videos/chunk-000/observation.images.top/episode_000001.mp4"
    encode_video(path, [camera_frame(64, 48, 1, k, 0) for k in range(40)], 30, "av1")
    with pytest.raises(RecordingError) as e:
        S.compute_episode_stats(read_recording(cams), tmp_path / "work")
    assert e.value.code == "video_length_mismatch" and e.value.path == path
    assert "has 40 frames, the episode's data has 45 rows" in e.value.fault


def test_unreadable_video_is_refused_naming_the_mp4(cams, tmp_path):
    path = cams / "videos/chunk-000/observation.images.wrist/episode_000001.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(200))
    with pytest.raises(RecordingError) as e:
        S.compute_episode_stats(read_recording(cams), tmp_path / "work")
    assert e.value.code == "video_unreadable" and e.value.path == path
