"""Videos: stream-copy concatenation, exact frames and timestamps, rollover, parameter changes,
bad input, and the golden pair against the official converter's output."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dorobot_assets import cli
from dorobot_assets.defs.convert import convert_recording
from dorobot_assets.lib import synthetic
from dorobot_assets.lib.encoders import PyAVEncoder
from dorobot_assets.lib.episodes import read_episodes
from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.rollover import FileSlot, plan_rollover
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.v21 import read_recording
from dorobot_assets.lib.v30 import video_file
from dorobot_assets.lib.video import MB, write_videos
from dorobot_assets_tests.conftest import file_hashes

TOP, WRIST = "observation.images.top", "observation.images.wrist"
LENGTHS = [24, 31, 20, 28, 22, 26]
FPS = 30
TOLERANCE_S = 1e-4  # LeRobot's decoder tolerance


def source_mp4(root: Path, key: str, episode: int) -> Path:
    return root / synthetic.LEROBOT_VIDEO_PATH.format(episode_chunk=0, video_key=key, episode_index=episode)


def decode(path: Path) -> list[tuple[Fraction, np.ndarray]]:
    """Every frame of the first video stream: (exact pts in seconds, raw planes as decoded)."""
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        return [(Fraction(f.pts) * st.time_base, f.to_ndarray()) for f in c.decode(st)]


def packets(path: Path) -> tuple[dict, list[tuple]]:
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        cc = st.codec_context
        params = {"codec": cc.codec.canonical_name, "size": (st.width, st.height), "pix_fmt": cc.pix_fmt,
                  "time_base": st.time_base, "duration": st.duration, "frames": st.frames,
                  "extradata": bytes(cc.extradata or b"")}
        return params, [(p.pts, p.dts, p.duration, p.is_keyframe, bytes(p)) for p in c.demux(st) if p.dts is not None]


def data_timestamps(dataset: Path) -> dict[int, list[float]]:
    table = pa.concat_tables([pq.read_table(f, columns=["episode_index", "timestamp"])
                              for f in sorted(dataset.glob("data/chunk-*/file-*.parquet"))])
    out: dict[int, list[float]] = {}
    for e, t in zip(table.column("episode_index").to_pylist(), table.column("timestamp").to_pylist()):
        out.setdefault(e, []).append(t)
    return out


def assert_frames_exact(out_frames, from_s: float, timestamps, source_frames, what: str) -> list[int]:
    """For each frame k: a frame at from + timestamp_k (within 1e-4 s) with the source's pixels."""
    pts = np.array([float(p) for p, _ in out_frames])
    used = []
    for k, t in enumerate(timestamps):
        query = from_s + float(t)
        j = int(np.argmin(np.abs(pts - query)))
        assert abs(pts[j] - query) < TOLERANCE_S, f"{what} frame {k}: nearest pts {pts[j]} for query {query}"
        assert np.array_equal(out_frames[j][1], source_frames[k][1]), f"{what} frame {k}: pixels differ"
        used.append(j)
    return used


# ----------------------------------------------------------------------------- exactness and rollover


def test_stream_copy_rolls_over_per_camera_and_every_frame_is_exact(make_sample, tmp_path):
    src = make_sample("two_codecs", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    before = file_hashes(src)
    out = tmp_path / "out" / "two_codecs"
    limit = 0.02
    run = convert_recording(src, out, ConversionSettings(stats="copy", video_file_size_mb=limit))
    assert run.success, run.error
    assert file_hashes(src) == before, "the source recording must not change"

    eps = read_episodes(out).to_pylist()
    timestamps = data_timestamps(out)
    for key in (TOP, WRIST):
        files = sorted((out / "videos" / key).glob("chunk-*/file-*.mp4"))
        assert len(files) >= 3, f"{key}: a tiny limit must roll over into several files"
        # The placement is LeRobot's size rule over the source mp4s' on-disk sizes, per camera.
        sizes = [source_mp4(src, key, e).stat().st_size / MB for e in range(len(LENGTHS))]
        expected = plan_rollover(sizes, limit)
        placed = [FileSlot(e[f"videos/{key}/chunk_index"], e[f"videos/{key}/file_index"]) for e in eps]
        assert placed == expected
        assert len(files) == len(set(expected))

        decoded = {f: decode(f) for f in files}
        frames_per_file: Counter = Counter()
        previous = None
        for e in eps:
            i = e["episode_index"]
            start, stop = e[f"videos/{key}/from_timestamp"], e[f"videos/{key}/to_timestamp"]
            path = out / video_file(key, e[f"videos/{key}/chunk_index"], e[f"videos/{key}/file_index"])
            # from = running sum of the durations before it in the same file, reset at each new file
            if previous is not None and previous[0] == path:
                assert start == previous[1]
            else:
                assert start == 0.0
            with av.open(str(source_mp4(src, key, i))) as c:
                duration = float(c.streams.video[0].duration * c.streams.video[0].time_base)
            assert stop - start == pytest.approx(duration, abs=1e-12) and duration == pytest.approx(LENGTHS[i] / FPS)
            assert_frames_exact(decoded[path], start, timestamps[i], decode(source_mp4(src, key, i)), f"{key} ep {i}")
            frames_per_file[path] += e["length"]
            previous = (path, stop)
        assert {f: len(frames) for f, frames in decoded.items()} == frames_per_file, "no frame more, none less"
    # the two cameras rolled over independently
    assert [e[f"videos/{TOP}/file_index"] for e in eps] != [e[f"videos/{WRIST}/file_index"] for e in eps]


def test_rerun_with_another_limit_leaves_only_the_new_files(make_sample, tmp_path):
    src = make_sample("two_codecs", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    rec = read_recording(src)
    out = tmp_path / "ds"
    first = write_videos(rec, out, ConversionSettings(video_file_size_mb=0.02))
    assert len(first.files) >= 6
    second = write_videos(rec, out, ConversionSettings())
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        f"videos/{TOP}/chunk-000/file-000.mp4", f"videos/{WRIST}/chunk-000/file-000.mp4",
    ]
    assert second.placements.column(f"videos/{WRIST}/file_index").to_pylist() == [0] * len(LENGTHS)
    assert second.frames == 2 * sum(LENGTHS)
    expected_from = [0.0]
    for n in LENGTHS[:-1]:
        expected_from.append(expected_from[-1] + n / FPS)
    assert second.placements.column(f"videos/{TOP}/from_timestamp").to_pylist() == pytest.approx(expected_from, abs=1e-12)


# ----------------------------------------------------------------------------- parameter changes

MIXED = synthetic.CameraSpec(TOP, "av1", overrides={2: {"codec": "h264"}, 3: {"codec": "h264", "width": 80, "height": 60}})
MIXED_LENGTHS = [20, 22, 21, 23, 20]


def test_a_parameter_change_starts_a_new_file_and_frames_stay_exact(make_sample, tmp_path):
    src = make_sample("mixed", lengths=MIXED_LENGTHS, cameras=[MIXED])
    rec = read_recording(src)
    out = tmp_path / "ds"
    result = write_videos(rec, out, ConversionSettings())  # 200 MB: only the changes split files
    table = result.placements
    assert table.column(f"videos/{TOP}/file_index").to_pylist() == [0, 0, 1, 2, 3]
    assert table.column(f"videos/{TOP}/from_timestamp").to_pylist() == pytest.approx([0, 20 / FPS, 0, 0, 0], abs=1e-12)
    assert len(result.notes) == 3
    assert "episode 2 starts a new file videos/observation.images.top/chunk-000/file-001.mp4" in result.notes[0]
    assert "codec av1 -> h264" in result.notes[0]
    assert "resolution 64x48 -> 80x60" in result.notes[1] and "codec" not in result.notes[1].split("because")[1]
    assert "codec h264 -> av1" in result.notes[2] and "resolution 80x60 -> 64x48" in result.notes[2]

    expected = {0: ("av1", (64, 48)), 1: ("h264", (64, 48)), 2: ("h264", (80, 60)), 3: ("av1", (64, 48))}
    for file_index, (codec, size) in expected.items():
        params, _ = packets(out / video_file(TOP, 0, file_index))
        assert (params["codec"], params["size"]) == (codec, size)
    for i, row in enumerate(table.to_pylist()):
        frames = decode(out / video_file(TOP, 0, row[f"videos/{TOP}/file_index"]))
        ts = [k / FPS for k in range(MIXED_LENGTHS[i])]
        assert_frames_exact(frames, row[f"videos/{TOP}/from_timestamp"], ts, decode(source_mp4(src, TOP, i)), f"ep {i}")


def test_reencode_joins_codec_changes_but_splits_at_a_resolution_change(make_sample, tmp_path):
    src = make_sample("mixed", lengths=MIXED_LENGTHS, cameras=[MIXED])
    rec = read_recording(src)
    out = tmp_path / "ds"
    encoder = PyAVEncoder("libx264", crf=18, preset="ultrafast")
    result = write_videos(rec, out, ConversionSettings(reencode=True), encoder)
    assert result.mode == "reencode" and result.encoder == "PyAV libx264 g=2 crf=18 preset=ultrafast yuv420p"
    assert result.features_info == {TOP: {"video.codec": "h264", "video.pix_fmt": "yuv420p"}}
    # every episode is h264 now; only the resolution change still forces a new file
    assert result.placements.column(f"videos/{TOP}/file_index").to_pylist() == [0, 0, 0, 1, 2]
    assert [n.split(" because ")[1] for n in result.notes] == [
        "its resolution 64x48 -> 80x60 (stream copy cannot mix them)",
        "its resolution 80x60 -> 64x48 (stream copy cannot mix them)",
    ]
    for i, row in enumerate(result.placements.to_pylist()):
        path = out / video_file(TOP, 0, row[f"videos/{TOP}/file_index"])
        params, pk = packets(path)
        assert params["codec"] == "h264"
        keys = [k for k, p in enumerate(pk) if p[3]]
        assert keys[0] == 0 and max(np.diff(keys + [len(pk)])) <= 2, "g=2: a key frame at least every 2 frames"
        frames = decode(path)
        pts = np.array([float(p) for p, _ in frames])
        source = decode(source_mp4(src, TOP, i))
        for k in range(MIXED_LENGTHS[i]):
            query = row[f"videos/{TOP}/from_timestamp"] + k / FPS
            j = int(np.argmin(np.abs(pts - query)))
            assert abs(pts[j] - query) < TOLERANCE_S
            diff = np.abs(frames[j][1].astype(int) - source[k][1].astype(int)).mean()
            assert diff < 3.0, f"ep {i} frame {k}: re-encoded frame too far from the source ({diff:.2f})"
    assert not [p for p in out.rglob(".tmp-*")], "no transcoded episode is left behind"


# ----------------------------------------------------------------------------- bad input


def _audio_only_mp4(path: Path) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in [*stream.encode(frame), *stream.encode()]:
            out.mux(p)


def _truncated_faststart_mp4(source: Path, path: Path) -> None:
    """The index says N frames, the frames are cut off (a copy interrupted mid-way)."""
    whole = path.with_suffix(".whole.mp4")
    with av.open(str(source)) as inp, av.open(str(whole), "w", options={"movflags": "faststart"}) as out:
        st = out.add_stream_from_template(inp.streams.video[0])
        for p in inp.demux(video=0):
            if p.dts is not None:
                p.stream = st
                out.mux(p)
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: int(len(data) * 0.6)])


BAD_INPUTS = {
    "missing_video_file": lambda bad, other: bad.unlink(),
    "video_unreadable": lambda bad, other: bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"garbage" * 50),
    "no_video_stream": lambda bad, other: _audio_only_mp4(bad),
    "video_frame_count_mismatch": lambda bad, other: shutil.copyfile(other, bad),
    "video_truncated": lambda bad, other: _truncated_faststart_mp4(other, bad),
}


@pytest.mark.parametrize("code", sorted(BAD_INPUTS))
def test_bad_video_input_is_refused_before_anything_is_written(make_sample, tmp_path, code):
    src = make_sample("two_codecs", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    rec = read_recording(src)  # the files break after the recording was read (e.g. a copy still running)
    bad = source_mp4(src, WRIST, 3)
    BAD_INPUTS[code](bad, source_mp4(src, WRIST, 1))
    out = tmp_path / "ds"
    with pytest.raises(RecordingError) as err:
        write_videos(rec, out, ConversionSettings(video_file_size_mb=0.02))
    assert err.value.code == code
    assert err.value.path == bad
    assert f"camera '{WRIST}', episode 3" in str(err.value) and str(bad) in str(err.value)
    if code == "video_frame_count_mismatch":
        assert "has 31 frames but episodes.jsonl says the episode has length 28" in str(err.value)
    if code == "video_truncated":
        assert "the header declares 31 frames but only" in str(err.value)
    if code == "no_video_stream":
        assert "has no video stream (streams found: audio)" in str(err.value)
    # the other camera ('top', converted first) was not written either
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_a_dropped_camera_gets_no_columns_and_no_files(make_sample, tmp_path):
    src = make_sample("two_codecs", lengths=LENGTHS, cameras=synthetic.demo_cameras())
    shutil.rmtree(src / "videos" / "chunk-000" / WRIST)
    with pytest.raises(RecordingError, match="missing_cameras=drop"):
        read_recording(src)
    rec = read_recording(src, missing_cameras="drop")
    out = tmp_path / "ds"
    result = write_videos(rec, out, ConversionSettings())
    assert result.dropped_cameras == [WRIST]
    assert result.notes == [f"camera '{WRIST}' is declared in info.json but has no mp4 files: left out of the "
                            "output (missing_cameras=drop)"]
    assert result.placements.column_names == [
        "episode_index", f"videos/{TOP}/chunk_index", f"videos/{TOP}/file_index",
        f"videos/{TOP}/from_timestamp", f"videos/{TOP}/to_timestamp",
    ]
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.mp4")] == [f"videos/{TOP}/chunk-000/file-000.mp4"]


# ----------------------------------------------------------------------------- golden pair


def _decode_window(path: Path, start_s: float, stop_s: float) -> list[tuple[int, np.ndarray]]:
    """Frames with start <= pts < stop, found by seeking (the file is long; AV1 g=2 seeks cheaply)."""
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        c.seek(max(0, int(start_s / st.time_base) - 4096), stream=st, backward=True)
        frames = []
        for f in c.decode(st):
            t = float(f.pts * st.time_base)
            if t >= stop_s:
                break
            if t >= start_s - 1e-9:
                frames.append((f.pts, f.to_ndarray()))
        return frames


def test_golden_pair_converts_like_the_official_tool(golden_pair, tmp_path):
    v21, official = golden_pair / "v21", golden_pair / "v30_official"
    before = file_hashes(v21)
    out = tmp_path / "g1"
    assert cli.main(["convert", str(v21), str(out), "--stats", "copy"]) == 0
    assert file_hashes(v21) == before

    ours, theirs = read_episodes(out), read_episodes(official)
    video_cols = [c for c in theirs.column_names if c.startswith("videos/")]
    assert video_cols and [c for c in ours.column_names if c.startswith("videos/")] == video_cols
    for col in video_cols:
        assert ours.schema.field(col).type == theirs.schema.field(col).type
        if col.endswith("_index"):
            assert ours.column(col).to_pylist() == theirs.column(col).to_pylist()
        else:
            np.testing.assert_allclose(ours.column(col).to_numpy(), theirs.column(col).to_numpy(), rtol=0, atol=1e-9)

    ours_info = json.loads((out / "meta" / "info.json").read_text())
    theirs_info = json.loads((official / "meta" / "info.json").read_text())
    assert ours_info["video_path"] == theirs_info["video_path"]
    assert ours_info["video_files_size_in_mb"] == theirs_info["video_files_size_in_mb"] == 200
    for name, feature in theirs_info["features"].items():
        if feature["dtype"] == "video":
            assert ours_info["features"][name] == feature, "stream copy: the video feature is carried verbatim"

    mp4s = sorted(p.relative_to(official) for p in official.rglob("*.mp4"))
    assert sorted(p.relative_to(out) for p in out.rglob("*.mp4")) == mp4s
    for rel in mp4s:
        # Same codec parameters and byte-identical packets at the same pts/dts: the files decode
        # identically frame for frame; decoding the episode boundaries shows it directly.
        ours_params, ours_packets = packets(out / rel)
        theirs_params, theirs_packets = packets(official / rel)
        assert ours_params == theirs_params
        assert len(ours_packets) == 1461 and ours_packets == theirs_packets
    key = video_cols[0].split("/")[1]
    for row in theirs.to_pylist():
        path = f"videos/{key}/chunk-{row[f'videos/{key}/chunk_index']:03d}/file-{row[f'videos/{key}/file_index']:03d}.mp4"
        start, stop = row[f"videos/{key}/from_timestamp"], row[f"videos/{key}/to_timestamp"]
        for lo, hi in ((start, start + 0.09), (stop - 0.09, stop)):
            mine, official_frames = _decode_window(out / path, lo, hi), _decode_window(official / path, lo, hi)
            assert len(mine) >= 2 and [p for p, _ in mine] == [p for p, _ in official_frames]
            assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(mine, official_frames))
