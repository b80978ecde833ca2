"""Camera statistics from the source mp4s: LeRobot's frame sampling, only the packets the sampled
frames depend on fed to the decoder (AV1 g=2, all-intra H.264, long-GOP H.264 with B-frames), each
needed frame once, pixel levels counted in this process and in helper processes."""

import subprocess
import sys

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


def test_plan_feeds_each_needed_frame_from_its_key_frame_once():
    # g=12 without B-frames: presentation order is decode order
    keys = [i % 12 == 0 for i in range(48)]
    runs = C.plan_decode(keys, list(range(48)), needed=[3, 5, 20, 30, 31, 40])
    assert runs == [range(0, 6), range(12, 21), range(24, 32), range(36, 41)]
    # all-intra: each needed frame is its own run, neighbours merge
    runs = C.plan_decode([True] * 100, list(range(100)), needed=[10, 11, 13, 50])
    assert runs == [range(10, 12), range(13, 14), range(50, 51)]
    runs = C.plan_decode([i % 2 == 0 for i in range(99)], list(range(99)), needed=sample_indices(99))
    assert runs == [range(0, 99)]


def test_plan_follows_decode_order_with_b_frames_and_open_gop_leading_pictures():
    # decode order I0 P3 B1 B2 | I6 P9 B7 B8 (closed GOPs): frame 2 needs I0 P3 B1 B2
    presentation = [0, 3, 1, 2, 6, 9, 7, 8]
    keys = [True, False, False, False, True, False, False, False]
    assert C.plan_decode(keys, presentation, needed=[2]) == [range(0, 4)]
    assert C.plan_decode(keys, presentation, needed=[3, 6]) == [range(0, 2), range(4, 5)]
    # open GOP: decode order I0 P2 B1 | I4 B3 (B3 is shown before I4 and may reference P2)
    presentation = [0, 2, 1, 4, 3]
    keys = [True, False, False, True, False]
    assert C.plan_decode(keys, presentation, needed=[3]) == [range(0, 5)]
    assert C.plan_decode(keys, presentation, needed=[4]) == [range(3, 4)]


@pytest.fixture
def cams(make_sample):
    return make_sample("cams", lengths=[120, 45], cameras=CAMERAS, fps=30)


@pytest.mark.parametrize("camera", [c.key for c in CAMERAS])
def test_decoding_feeds_only_the_packets_the_needed_frames_depend_on(cams, camera):
    path = cams / f"videos/chunk-000/{camera}/episode_000000.mp4"
    reference = all_frames(path)
    needed = [3, 17, 18, 64, 65, 101, 119]
    counts = C.DecodeCounts()
    got = [(i, frame.to_ndarray(format="rgb24")) for i, frame in C.decoded_frames(path, needed, 120, counts)]
    assert [i for i, _ in got] == needed
    for i, rgb in got:
        assert np.array_equal(rgb, reference[i]), f"frame {i} is not the frame at that position"
    assert counts.fed == sum(len(r) for r in counts.runs) == counts.decoded
    with av.open(str(path)) as container:
        video = C.demux_packets(container, path)
    if camera.endswith("side"):
        assert [video.presentation[i] for i, k in enumerate(video.keyframe) if k] == list(range(0, 120, 12))
        assert video.presentation != sorted(video.presentation), "B-frames: decode order is not presentation order"
    if camera.endswith("wrist"):  # all-intra: nothing but the needed frames is decoded
        assert counts.decoded == len(needed)
    else:
        assert counts.decoded < 120 / 2


def test_sampling_is_lerobots():
    for length in [1, 2, 57, 99, 100, 101, 464, 465, 1000, 12345, 500000]:
        assert C.lerobot_sample_indices(length).tolist() == sample_indices(length).tolist(), length


@pytest.mark.parametrize("shape", [(48, 64), (480, 640), (720, 1280), (300, 200), (299, 299), (301, 150)])
def test_stride_is_lerobots_downsampling(shape):
    frame = np.zeros(shape + (3,), np.uint8)
    step = C.lerobot_stride(*shape)
    assert frame[::step, ::step].shape == downsample(frame).shape


def test_level_counter_counts_each_channel_of_every_pixel():
    rng = np.random.default_rng(9)
    frames = [rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8) for _ in range(6)]
    frames += [rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)]  # another size, odd pixel count
    frames += [np.full((2, 2, 3), 200, np.uint8)[::1, ::2]]  # not contiguous
    weights = [1, 1, 3, 1, 1, 1, 2, 1]
    counter = C.LevelCounter()
    for frame, weight in zip(frames, weights):
        counter.add(frame, weight)
    expected = sum(w * np.stack([np.bincount(f[..., c].ravel(), minlength=256) for c in range(3)])
                   for f, w in zip(frames, weights))
    np.testing.assert_array_equal(counter.take(), expected)
    counter.add(frames[0])  # taking the counts starts from zero
    np.testing.assert_array_equal(counter.take(), np.stack([np.bincount(frames[0][..., c].ravel(), minlength=256)
                                                           for c in range(3)]))


def test_helper_processes_count_the_same_levels_and_name_a_broken_video(cams):
    rec = read_recording(cams)
    jobs = [C.level_job(ep.video_paths[cam.key], ep.length) for ep in rec.episodes for cam in CAMERAS]
    with C.LevelCounting(jobs, threads=1) as here:
        alone = [sample for _, sample in here.outcomes()]
        assert here.helper_processes == 0
    with C.LevelCounting(jobs, threads=3) as spread:
        assert spread.helper_processes == 2  # of two and one decoding threads
        together = [sample for _, sample in spread.outcomes()]
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a.level_counts, b.level_counts)
        assert a.frames == b.frames == min(100, a.frames) and a.decode.decoded == b.decode.decoded

    broken = cams / "videos/chunk-000/observation.images.side/episode_000001.mp4"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(RecordingError) as e:
        with C.LevelCounting(jobs, threads=3) as spread:
            list(spread.outcomes())
    assert e.value.code == "video_unreadable" and e.value.path == broken


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


def test_the_parent_of_helper_processes_never_loads_pyav(cams):
    code = f"""
import sys
from dorobot_assets.lib import camera_stats as C
from dorobot_assets.lib.v21 import read_recording
rec = read_recording({str(cams)!r})
jobs = [C.level_job(ep.video_paths[k], ep.length) for ep in rec.episodes for k in rec.video_keys]
with C.LevelCounting(jobs, threads=2) as counting:
    print(sum(1 for _ in counting.outcomes()), counting.helper_processes, "av" in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["6", "1", "False"]  # one helper decoding on two threads
