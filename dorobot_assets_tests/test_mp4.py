"""lib/mp4.py and the box copy of lib/video.py: exactly the packets of a PyAV remux.

The reference is the PyAV remux path of lib/video.py (``copy_camera(..., remux=True)``), which
is what the videos step did before box copy. For every fixture both paths write the same camera
and we compare, file by file: every packet's bytes, pts, dts, duration and key flag, the stream's
codec, size, pixel format, time base, duration, frame count, start and extradata, the
from/to timestamps of every episode (exact fractions), the sample tables of the two files, and
the decoded frames.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from dorobot_assets.lib import mp4, synthetic
from dorobot_assets.lib.encoders import EncodeCancelled
from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.v21 import read_recording
from dorobot_assets.lib.v30 import video_file
from dorobot_assets.lib.validate import demuxed_packet_times
from dorobot_assets.lib.video import copy_camera, inspect_video, probe_video, write_videos
from dorobot_assets_tests.conftest import shared_dataset

LENGTHS = [17, 31, 5, 24, 12]
LONG_GOP = {"g": "12", "bf": "2", "tune": None}  # B-frames: ctts and an edit list shifting them
PYRAMID = {"g": "10", "bf": "3", "tune": None, "x264-params": "b-pyramid=normal"}
CAMERAS = {
    "av1": synthetic.CameraSpec("observation.images.av1", "av1"),  # libsvtav1, key frame every 2
    "h264": synthetic.CameraSpec("observation.images.h264", "h264"),  # libx264 all-intra
    "h264_bframes": synthetic.CameraSpec("observation.images.h264_bframes", "h264", encoder_options=LONG_GOP),
    "h264_pyramid": synthetic.CameraSpec("observation.images.h264_pyramid", "h264", encoder_options=PYRAMID),
}
SMALL_FILES_MB = 0.004  # a few episodes per output file


def encode(path: Path, codec: str, n: int, episode: int, options: dict, pix_fmt: str = "yuv420p",
           rate: int | Fraction = 30) -> Path:
    """An episode MP4 from an encoder synthetic.py has no setting for (HEVC, 10-bit, NTSC rates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        for k in range(n):
            frame = av.VideoFrame.from_ndarray(synthetic.camera_frame(64, 48, episode, k, 1), format="rgb24")
            for packet in stream.encode(frame.reformat(format=pix_fmt)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def remux(source: Path, dest: Path, mux_options: dict, change=None) -> Path:
    """``source``'s packets in a new MP4 written by FFmpeg's muxer with ``mux_options``."""
    with av.open(str(source)) as inp, av.open(str(dest), "w", format="mp4", options=mux_options) as out:
        stream = out.add_stream_from_template(inp.streams.video[0], opaque=True)
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                if change is not None:
                    change(packet)
                packet.stream = stream
                out.mux(packet)
    return dest


def demux(path: Path) -> tuple[dict, list[tuple]]:
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        cc = st.codec_context
        params = {"codec": cc.codec.canonical_name, "size": (st.width, st.height), "pix_fmt": cc.pix_fmt,
                  "time_base": st.time_base, "duration": st.duration, "frames": st.frames,
                  "start": st.start_time, "extradata": bytes(cc.extradata or b"")}
        return params, [(p.pts, p.dts, p.duration, p.is_keyframe, p.is_disposable, bytes(p))
                        for p in c.demux(st) if p.dts is not None]


def decoded(path: Path) -> list[tuple[int, np.ndarray]]:
    with av.open(str(path)) as c:
        return [(f.pts, f.to_ndarray()) for f in c.decode(video=0)]


def tables(path: Path) -> dict:
    movie = mp4.read_mp4(path)
    t = movie.tracks[0]
    return {
        "mvhd": (movie.movie_timescale, movie.movie_duration), "mdhd": (t.timescale, t.media_duration),
        "elst": t.edits, "stts": t.deltas.tolist(), "sizes": t.sizes.tolist(),
        "ctts": None if t.composition is None else t.composition.tolist(),
        "stss": None if t.sync is None else np.flatnonzero(t.sync).tolist(),
        "tkhd": (t.tkhd_matrix, t.tkhd_width, t.tkhd_height), "config": t.config,
        "sdtp": None if t.dependency is None else t.dependency.tobytes(),
        "other": t.other_tables, "tracks": len(movie.tracks),
    }


def sources_of(paths: list[Path], camera: str = "cam", lengths: list[int] | None = None) -> list:
    """Header-checked sources, each expected to hold ``lengths`` frames (default: what its header declares)."""
    if lengths is None:
        lengths = []
        for p in paths:
            with av.open(str(p)) as c:
                lengths.append(c.streams.video[0].frames)
    return [inspect_video(p, camera, i, n) for i, (p, n) in enumerate(zip(paths, lengths))]


def both_ways(sources: list, tmp: Path, camera: str, limit_mb: float = SMALL_FILES_MB):
    """(box copy result, PyAV remux result) of one camera into two dataset folders."""
    settings = ConversionSettings(video_file_size_mb=limit_mb)
    box = copy_camera(camera, sources, tmp / "box", settings)
    assert box.remux_reason is None, "box copy must take these files"
    ref = copy_camera(camera, sources, tmp / "remux", settings, remux=True)
    return box, ref


def assert_same_output(box, ref, root: Path, *, same_sample_entry: bool = True) -> int:
    """The two conversions agree on every placement, packet, stream field, table and frame."""
    assert box.slots == ref.slots
    assert box.from_s == ref.from_s and box.to_s == ref.to_s  # exact fractions
    assert box.frames == ref.frames
    assert [f.relative_to(root / "box") for f in box.files] == [f.relative_to(root / "remux") for f in ref.files]
    for ours, theirs in zip(box.files, ref.files):
        ours_params, ours_packets = demux(ours)
        theirs_params, theirs_packets = demux(theirs)
        assert ours_params == theirs_params
        assert ours_packets == theirs_packets
        assert tables(ours) == tables(theirs)
        if same_sample_entry:
            # FFmpeg's muxer rewrites AV1 sample entries with a pasp box (the aspect ratio its
            # parser guessed); box copy keeps the source's entry, as the official converter's
            # older FFmpeg did. The codec configuration (compared in tables) is the same.
            assert mp4.read_mp4(ours).tracks[0].stsd == mp4.read_mp4(theirs).tracks[0].stsd
    for ours, theirs in zip(box.files, ref.files):
        mine, reference = decoded(ours), decoded(theirs)
        assert [p for p, _ in mine] == [p for p, _ in reference]
        assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(mine, reference))
    return sum(len(demux(f)[1]) for f in box.files)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mp4") / "rec"
    return synthetic.make_recording(root, lengths=LENGTHS, cameras=list(CAMERAS.values()))


def camera_sources(recording: Path, name: str) -> list:
    key = CAMERAS[name].key
    paths = [recording / synthetic.LEROBOT_VIDEO_PATH.format(episode_chunk=0, video_key=key, episode_index=e)
             for e in range(len(LENGTHS))]
    return [inspect_video(p, key, e, n) for e, (p, n) in enumerate(zip(paths, LENGTHS))]


@pytest.fixture(scope="module")
def hevc_episodes(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("hevc")
    options = {"x265-params": "log-level=none:keyint=6:bframes=4"}
    return [encode(root / f"episode_{e}.mp4", "libx265", n, e, options) for e, n in enumerate(LENGTHS)]


# ----------------------------------------------------------------------------- the demuxer model


@pytest.mark.parametrize("name", sorted(CAMERAS))
def test_timeline_is_what_ffmpeg_demuxes(recording, name):
    for src in camera_sources(recording, name):
        movie = mp4.read_mp4(src.path)
        timeline = mp4.demuxed_timeline(movie, movie.tracks[0])
        with av.open(str(src.path)) as c:
            st = c.streams.video[0]
            packets = [(p.pts, p.dts, p.duration, p.is_keyframe) for p in c.demux(st) if p.dts is not None]
            start, duration, frames = st.start_time, st.duration, st.frames
        assert list(zip(timeline.pts.tolist(), timeline.dts.tolist(), timeline.durations.tolist(),
                        timeline.keyframes.tolist())) == packets
        assert (timeline.start, timeline.duration, timeline.frames) == (start, duration, frames)


@pytest.mark.parametrize("name", sorted(CAMERAS))
def test_header_check_gives_what_the_pyav_probe_gives(recording, name):
    for src in camera_sources(recording, name):
        probed = probe_video(src.path, src.camera, src.episode_index, src.frames)
        assert src.remux_reason is None and src.part is not None
        assert src == probed  # path, size, frames, start, duration and every stream parameter


def test_b_frames_give_a_shorter_stream_duration_and_a_shifted_edit_list(recording):
    """The case that needs care: FFmpeg's edit list for B-frames rounds to milliseconds, so the
    stream is 1/1536 s shorter than its frames; from/to follow the stream durations."""
    src = camera_sources(recording, "h264_bframes")[0]
    movie = mp4.read_mp4(src.path)
    track = movie.tracks[0]
    assert track.edits == [(566, 1024, 0x10000)]  # 566 ms shown, starting at the first frame's pts
    assert (src.start, src.duration, track.media_duration) == (0, 8694, 9216)  # 17 frames of 512 = 8704
    assert mp4.demuxed_timeline(movie, track).dts[:2].tolist() == [-1024, -512]
    # what the checked source keeps: the shift, the last decode time and the end of the last frame
    assert (src.part.shift, src.part.last_dts, src.part.end) == (1024, 16 * 512 - 1024, 8704)
    assert src.part.decode_times()[:2].tolist() == [-1024, -512]


# ----------------------------------------------------------------------------- what a checked source keeps


def test_a_checked_source_keeps_compact_tables(recording):
    """From the check of every source until its file is written, a camera holds one Part per
    episode: runs where the file stores runs, 2 bytes a frame for small frames, flags as bits,
    one byte run per source instead of an offset per frame, and shared headers."""
    sources = camera_sources(recording, "h264")  # all-intra: every frame a key frame, no B-frames
    part, track = sources[1].part, mp4.read_mp4(sources[1].path).tracks[0]
    assert part.sizes.dtype == np.uint16 and part.sizes.tolist() == track.sizes.tolist()
    assert part.time_runs.tolist() == [[31, 512]]
    assert (part.sync, part.composition, part.disposable) == (None, None, None)
    assert part.byte_runs == ((48, 14925, 31),) == ((int(track.offsets[0]), int(track.sizes.sum()), 31),)
    assert (part.shift, part.start, part.duration, part.last_dts, part.end) == (0, 0, 15872, 15360, 15872)
    assert len({id(s.part.header) for s in sources}) == len({id(s.params) for s in sources}) == 1

    av1 = camera_sources(recording, "av1")[1].part  # a key frame every other frame: 16 of 31
    assert av1.sync.tolist() == [0b10101010] * 4
    assert av1.keyframes().tolist() == [i % 2 == 0 for i in range(31)] and av1.key_count() == 16

    pyramid = camera_sources(recording, "h264_pyramid")[1]
    movie = mp4.read_mp4(pyramid.path)
    timeline = mp4.demuxed_timeline(movie, movie.tracks[0])
    assert pyramid.part.composition.dtype == np.int32
    assert pyramid.part.composition.tolist() == timeline.composition.tolist()
    assert pyramid.part.keyframes().tolist() == timeline.keyframes.tolist() and pyramid.part.key_count() == 4
    assert pyramid.part.decode_times().tolist() == timeline.dts.tolist()


def test_frames_over_64_kib_keep_4_bytes_each(recording):
    src = camera_sources(recording, "h264")[0]
    movie = mp4.read_mp4(src.path)
    track = movie.tracks[0]
    large = dataclasses.replace(track, sizes=track.sizes + 0xFFFF)
    part = mp4.Part.of(movie, large, mp4.demuxed_timeline(movie, large))
    assert part.sizes.dtype == np.uint32 and part.sizes.tolist() == (track.sizes.astype(np.int64) + 0xFFFF).tolist()


def test_decode_times_that_would_not_increase_are_found_from_a_few_numbers(recording):
    parts = [s.part for s in camera_sources(recording, "h264_bframes")]
    assert mp4.concatenation_obstacle(parts) is None
    late = dataclasses.replace(parts[1], start=10_000)  # its first frame would be decoded before part 0's last
    message = "decode times would not increase at sample 17 of the joined file"
    assert mp4.concatenation_obstacle([parts[0], late, parts[2]]) == message
    with pytest.raises(mp4.Mp4Unsupported) as err:
        mp4.plan_concatenation([parts[0], late, parts[2]])
    assert str(err.value) == message


def test_a_camera_plans_and_writes_one_file_at_a_time(recording, tmp_path, monkeypatch):
    calls = []
    plan, write = mp4.plan_concatenation, mp4.write_concatenation

    def planning(parts):
        calls.append(("plan", len(parts)))
        return plan(parts)

    def writing(path, concat, check_cancel=None):
        calls.append(("write", concat.frames))
        write(path, concat, check_cancel)

    monkeypatch.setattr(mp4, "plan_concatenation", planning)
    monkeypatch.setattr(mp4, "write_concatenation", writing)
    result = copy_camera("cam", camera_sources(recording, "av1"), tmp_path / "ds", ConversionSettings(video_file_size_mb=0.02))
    assert [s.file_index for s in result.slots] == [0, 0, 0, 1, 1]
    assert calls == [("plan", 3), ("write", 17 + 31 + 5), ("plan", 2), ("write", 24 + 12)]


def test_an_obstacle_in_a_later_file_remuxes_the_whole_camera(recording, tmp_path, monkeypatch):
    """Box copy or not is decided for every file of the camera before the first is written."""
    sources = camera_sources(recording, "av1")
    remuxed = remux(sources[4].path, tmp_path / "remuxed.mp4", {})  # FFmpeg's muxer adds a pasp box
    checked = sources_of([*[s.path for s in sources[:4]], remuxed])

    def no_box_copy(*args, **kwargs):
        raise AssertionError("a file was written by box copy")

    monkeypatch.setattr(mp4, "write_concatenation", no_box_copy)
    result = copy_camera("cam", checked, tmp_path / "ds", ConversionSettings(video_file_size_mb=0.02))
    assert [s.file_index for s in result.slots] == [0, 0, 0, 1, 1]
    assert result.remux_reason == f"remuxed.mp4: its sample description differs from {sources[3].path.name}'s"
    assert result.frames == sum(LENGTHS) and len(result.files) == 2


# ----------------------------------------------------------------------------- box copy = PyAV remux


@pytest.mark.parametrize("name", sorted(CAMERAS))
def test_box_copy_gives_the_packets_of_the_pyav_remux(recording, tmp_path, name):
    sources = camera_sources(recording, name)
    box, ref = both_ways(sources, tmp_path, CAMERAS[name].key)
    assert len(box.files) >= 2, "the small limit makes several files"
    assert assert_same_output(box, ref, tmp_path, same_sample_entry=name != "av1") == sum(LENGTHS)


@pytest.mark.parametrize("name", sorted(CAMERAS))
def test_every_episode_in_one_file_gives_the_packets_of_the_pyav_remux(recording, tmp_path, name):
    """The tables joined across parts: stts with the gaps between parts, stss, ctts runs."""
    box, ref = both_ways(camera_sources(recording, name), tmp_path, CAMERAS[name].key, limit_mb=1)
    assert len(box.files) == 1
    assert assert_same_output(box, ref, tmp_path, same_sample_entry=name != "av1") == sum(LENGTHS)


@pytest.mark.parametrize("limit_mb", [SMALL_FILES_MB, 1])
def test_hevc_with_b_frames_gives_the_packets_of_the_pyav_remux(hevc_episodes, tmp_path, limit_mb):
    sources = sources_of(hevc_episodes)
    assert {s.params.codec for s in sources} == {"hevc"} and sources[0].part.composition is not None
    assert sources[0].part.disposable is not None, "libx265 flags disposable frames: an sdtp box"
    box, ref = both_ways(sources, tmp_path, "cam", limit_mb=limit_mb)
    assert len(box.files) == (1 if limit_mb == 1 else 5)
    assert assert_same_output(box, ref, tmp_path) == sum(LENGTHS)


@pytest.mark.parametrize("rate, timescale", [(25, 12800), (60, 15360), (Fraction(30000, 1001), 30000)])
def test_other_frame_rates_with_b_frames_give_the_packets_of_the_pyav_remux(tmp_path, rate, timescale):
    """Other time scales round the millisecond edit lists differently."""
    options = {"g": "9", "bf": "2", "preset": "ultrafast"}
    paths = [encode(tmp_path / "src" / f"e{e}.mp4", "libx264", n, e, options, rate=rate) for e, n in enumerate(LENGTHS)]
    sources = sources_of(paths)
    assert {s.params.time_base for s in sources} == {Fraction(1, timescale)}
    box, ref = both_ways(sources, tmp_path, "cam")
    assert assert_same_output(box, ref, tmp_path) == sum(LENGTHS)


def test_sources_without_an_edit_list_start_late_and_join_exactly(recording, tmp_path):
    """Muxed without an edit list, B-frame episodes start at their first composition offset."""
    sources = camera_sources(recording, "h264_bframes")
    plain = [remux(s.path, tmp_path / f"plain_{s.episode_index}.mp4", {"use_editlist": "0"}) for s in sources]
    mixed = sources_of([plain[0], sources[1].path, plain[2], plain[3], sources[4].path])
    assert mp4.read_mp4(mixed[0].path).tracks[0].edits == [] and mixed[0].start == 1024
    box, ref = both_ways(mixed, tmp_path, "cam", limit_mb=1)
    assert len(box.files) == 1
    # Without an edit list an episode lasts its frames (512 ticks each); with one, its edit:
    # episode 1's is ceil(32 frames * 512 / 15.36) - 34 = 1033 ms = 15867 ticks, episode 4's 400 ms.
    durations = [17 * 512, 15867, 5 * 512, 24 * 512, 6144]
    starts = np.cumsum([0] + durations[:-1]).tolist()
    assert box.from_s == [Fraction(t, 15360) for t in starts]
    assert box.to_s == [Fraction(t + d, 15360) for t, d in zip(starts, durations)]
    assert assert_same_output(box, ref, tmp_path) == sum(LENGTHS)


def test_golden_pair_sources_give_the_packets_of_the_pyav_remux(tmp_path):
    v21 = shared_dataset("g1_subset4_golden_pair") / "v21"
    paths = sorted((v21 / "videos" / "chunk-000" / "observation.images.cam_high").glob("*.mp4"))
    sources = sources_of(paths)
    box, ref = both_ways(sources, tmp_path, "cam", limit_mb=200)
    assert [str(f.relative_to(tmp_path / "box")) for f in box.files] == [video_file("cam", 0, 0)]
    ours_params, ours_packets = demux(box.files[0])
    assert (ours_params, ours_packets) == demux(ref.files[0]) and len(ours_packets) == 1461
    assert box.from_s == ref.from_s and box.to_s == ref.to_s


@pytest.mark.parametrize("pix_fmt, codec, options", [
    ("yuv444p", "libx264", {"preset": "ultrafast"}),
    ("yuv422p10le", "libx264", {"preset": "ultrafast"}),
    ("yuv420p10le", "libsvtav1", {"preset": "12"}),
    ("yuv422p", "libx265", {"x265-params": "log-level=none"}),
])
def test_pixel_format_stand_in_names_what_the_decoder_reports(tmp_path, pix_fmt, codec, options):
    path = encode(tmp_path / "e.mp4", codec, 4, 0, options, pix_fmt=pix_fmt)
    src = inspect_video(path, "cam", 0, 4)
    assert src.params.pix_fmt == pix_fmt == probe_video(path, "cam", 0, 4).params.pix_fmt


# ----------------------------------------------------------------------------- the written file


def test_index_first_then_one_64_bit_mdat_and_one_chunk_per_source(recording, tmp_path):
    sources = camera_sources(recording, "h264_bframes")
    box, _ = both_ways(sources, tmp_path, CAMERAS["h264_bframes"].key, limit_mb=1)
    path = box.files[0]
    movie = mp4.read_mp4(path)
    assert movie.top_level == ("ftyp", "moov", "mdat")
    data = path.read_bytes()
    ftyp_size = struct.unpack(">I", data[:4])[0]
    moov_size = struct.unpack(">I", data[ftyp_size:ftyp_size + 4])[0]
    size, kind, large = struct.unpack(">I4sQ", data[ftyp_size + moov_size:ftyp_size + moov_size + 16])
    assert (size, kind, large) == (1, b"mdat", len(data) - ftyp_size - moov_size)
    assert data[:ftyp_size] == sources[0].path.read_bytes()[:ftyp_size], "the first source's ftyp"
    track = movie.tracks[0]
    assert track.stsd[:-12] == mp4.read_mp4(sources[0].path).tracks[0].stsd[:-12], "the first source's sample entry"
    # one chunk per source (each source's samples are contiguous), 64-bit chunk offsets
    payloads = [int(s.part.sizes.sum()) for s in sources]
    assert [s.part.byte_runs for s in sources] == [((s.part.byte_runs[0][0], size, n),)
                                                   for s, size, n in zip(sources, payloads, LENGTHS)]
    firsts = np.cumsum([0] + LENGTHS[:-1])
    assert track.offsets[firsts].tolist() == (ftyp_size + moov_size + 16 + np.cumsum([0] + payloads[:-1])).tolist()
    assert track.chunk_samples.tolist() == LENGTHS
    assert track.byte_runs == [(ftyp_size + moov_size + 16, sum(payloads), sum(LENGTHS))], "back to back"
    assert b"co64" in data[:ftyp_size + moov_size] and b"stco" not in data[:ftyp_size + moov_size]
    # the sample bytes are the sources' bytes, in order
    joined = b"".join(s.path.read_bytes()[offset:offset + size] for s in sources for offset, size, _ in s.part.byte_runs)
    assert hashlib.sha256(data[ftyp_size + moov_size + 16:]).digest() == hashlib.sha256(joined).digest()


def test_btrt_describes_the_joined_file(recording, tmp_path):
    sources = camera_sources(recording, "h264")
    box, _ = both_ways(sources, tmp_path, CAMERAS["h264"].key, limit_mb=1)
    stsd = mp4.read_mp4(box.files[0]).tracks[0].stsd
    buffer_size, max_rate, avg_rate = struct.unpack(">III", stsd[-12:])
    total = sum(int(s.part.sizes.sum()) for s in sources)
    ticks = sum(LENGTHS) * 512  # all-intra: stts is 512 per frame, no edit shift
    with av.open(str(sources[0].path)) as c:  # the bit rate FFmpeg reports, which its muxer takes as the maximum
        first_rate = c.streams.video[0].codec_context.bit_rate
    assert sources[0].part.bit_rate == first_rate == int(sources[0].part.sizes.sum()) * 8 * 15360 // (17 * 512)
    assert (buffer_size, avg_rate) == (0, total * 8 * 15360 // ticks)
    assert max_rate == max(first_rate, avg_rate)


def test_btrt_maximum_is_the_first_files_bit_rate_as_ffmpeg_reports_it(recording, tmp_path):
    """x264 leaves the btrt average at 0; FFmpeg's demuxer reports the bit rate from the bytes
    and the duration, and the PyAV remux takes that as the maximum when it is the larger."""
    sources = camera_sources(recording, "h264_bframes")
    source_btrt = mp4.read_mp4(sources[0].path).tracks[0].stsd[-12:]
    first_rate = int(sources[0].part.sizes.sum()) * 8 * 15360 // (17 * 512)
    assert struct.unpack(">III", source_btrt) == (0, first_rate, 0)
    box, ref = both_ways(sources, tmp_path, CAMERAS["h264_bframes"].key, limit_mb=1)
    joined = mp4.read_mp4(box.files[0]).tracks[0]
    average = int(joined.sizes.sum()) * 8 * 15360 // int(joined.deltas.sum())
    assert first_rate > average
    assert struct.unpack(">III", joined.stsd[-12:]) == (0, first_rate, average)
    assert joined.stsd == mp4.read_mp4(ref.files[0]).tracks[0].stsd


def test_a_source_changed_after_the_check_is_refused(recording, tmp_path):
    sources = camera_sources(recording, "av1")
    copied = [tmp_path / f"e{i}.mp4" for i in range(len(sources))]
    for s, c in zip(sources, copied):
        c.write_bytes(s.path.read_bytes())
    checked = sources_of(copied)
    with open(copied[3], "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(RecordingError) as err:
        copy_camera("cam", checked, tmp_path / "ds", ConversionSettings())
    assert err.value.code == "video_changed" and err.value.path == copied[3]
    size = sources[3].size_bytes
    assert err.value.fault.startswith(f"changed since it was checked: {size} -> {size + 10} bytes, modification time ")
    assert not [p for p in (tmp_path / "ds").rglob("*") if p.is_file()], "no file, no temporary file"


def test_cancel_stops_the_copy_and_leaves_nothing(recording, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EncodeCancelled):
        copy_camera("cam", camera_sources(recording, "av1"), tmp_path / "ds", ConversionSettings(), cancel)
    assert not [p for p in (tmp_path / "ds").rglob("*") if p.is_file()]


def test_without_copy_file_range_the_bounded_buffer_copies_the_same_bytes(recording, tmp_path, monkeypatch):
    sources = camera_sources(recording, "h264_pyramid")
    kernel = copy_camera("cam", sources, tmp_path / "kernel", ConversionSettings())
    monkeypatch.delattr(os, "copy_file_range")
    monkeypatch.setattr(mp4, "FALLBACK_BUFFER", 1000)
    buffered = copy_camera("cam", sources, tmp_path / "buffered", ConversionSettings())
    assert kernel.files[0].read_bytes() == buffered.files[0].read_bytes()


# ----------------------------------------------------------------------------- faults from headers


def test_a_file_cut_after_sample_k_declares_all_and_holds_k(recording, tmp_path):
    src = camera_sources(recording, "h264")[1]  # 31 frames
    cut = tmp_path / "cut.mp4"
    whole = remux(src.path, tmp_path / "fast.mp4", {"movflags": "faststart"})
    track = mp4.read_mp4(whole).tracks[0]
    cut.write_bytes(whole.read_bytes()[: int(track.offsets[20] + track.sizes[20])])  # samples 0..20 whole
    with pytest.raises(RecordingError) as err:
        inspect_video(cut, "cam", 1, 31)
    assert err.value.code == "video_truncated"
    assert err.value.fault == ("camera 'cam', episode 1: the header declares 31 frames but only 21 can be read "
                               "(truncated or corrupt)")


def test_a_file_cut_before_its_index_is_unreadable(recording, tmp_path):
    src = camera_sources(recording, "h264")[1]  # moov at the end, as PyAV writes it
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.path.read_bytes()[:-100])
    with pytest.raises(RecordingError) as err:
        inspect_video(cut, "cam", 1, 31)
    assert err.value.code == "video_unreadable"
    assert err.value.fault.startswith("camera 'cam', episode 1: cannot be opened as a video file: the moov box is "
                                      "cut off: it claims ")


def test_count_mismatch_names_both_counts(recording):
    src = camera_sources(recording, "av1")[0]
    with pytest.raises(RecordingError) as err:
        inspect_video(src.path, "cam", 0, 18)
    assert (err.value.code, err.value.fault) == (
        "video_frame_count_mismatch", "camera 'cam', episode 0: has 17 frames but episodes.jsonl says the episode "
                                      "has length 18")


def test_a_constant_sample_size_beyond_the_file_is_refused_without_allocating(recording, tmp_path):
    """A damaged stsz (one size for every sample, a count of 2^32 - 1) is named, not allocated."""
    data = bytearray(camera_sources(recording, "av1")[0].path.read_bytes())
    at = data.index(b"stsz") + 4  # version and flags, then sample_size and sample_count
    struct.pack_into(">II", data, at + 4, 1000, 0xFFFFFFFF)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    with pytest.raises(mp4.Mp4Unsupported) as err:
        mp4.read_mp4(damaged)
    assert str(err.value) == (f"track 1: stsz declares 4294967295 samples of 1000 bytes, more than the file's "
                              f"{len(data)} bytes")


# ----------------------------------------------------------------------------- fallbacks to PyAV remux


def _with_audio(video: Path, dest: Path) -> Path:
    with av.open(str(video)) as inp, av.open(str(dest), "w", format="mp4") as out:
        vs = out.add_stream_from_template(inp.streams.video[0], opaque=True)
        aus = out.add_stream("aac", rate=16000)
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = vs
                out.mux(packet)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*aus.encode(frame), *aus.encode()]:
            out.mux(packet)
    return dest


FALLBACKS = {
    "fragmented": (lambda src, dest: remux(src, dest, {"movflags": "frag_keyframe+empty_moov"}),
                   "fragmented MP4 (moof boxes)"),
    "audio_track": (lambda src, dest: _with_audio(src, dest),
                    "2 tracks (video, audio); box copy keeps files with one video track"),
    "delayed_start": (lambda src, dest: remux(src, dest, {}, change=_delay), "an edit list with 2 entries"),
}


def _delay(packet) -> None:  # presentation starts 1000 ticks late: FFmpeg writes an empty edit first
    packet.pts += 1000
    packet.dts += 1000


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_files_box_copy_does_not_handle_are_remuxed_with_pyav(recording, tmp_path, case):
    make, reason = FALLBACKS[case]
    sources = camera_sources(recording, "h264_bframes")
    odd = make(sources[2].path, tmp_path / "odd.mp4")
    paths = [s.path for s in sources]
    paths[2] = odd
    checked = sources_of(paths, lengths=LENGTHS)
    assert checked[2].part is None and checked[2].remux_reason == f"odd.mp4: {reason}"
    assert dataclasses.replace(checked[2], remux_reason=None) == probe_video(odd, "cam", 2, LENGTHS[2])
    result = copy_camera("cam", checked, tmp_path / "ds", ConversionSettings())
    assert result.remux_reason == f"odd.mp4: {reason}"
    ref = copy_camera("cam", checked, tmp_path / "ref", ConversionSettings(), remux=True)
    assert result.from_s == ref.from_s and demux(result.files[0]) == demux(ref.files[0])


def test_sample_descriptions_that_differ_inside_one_file_go_to_pyav(recording, tmp_path):
    """Same codec, size and configuration, but FFmpeg's muxer added a pasp box to one AV1 entry:
    box copy cannot prove one entry fits both, so the camera is remuxed."""
    sources = camera_sources(recording, "av1")
    remuxed = remux(sources[1].path, tmp_path / "remuxed.mp4", {})
    checked = sources_of([sources[0].path, remuxed, *[s.path for s in sources[2:]]])
    assert checked[0].params == checked[1].params
    result = copy_camera("cam", checked, tmp_path / "ds", ConversionSettings())
    assert result.remux_reason == f"remuxed.mp4: its sample description differs from {sources[0].path.name}'s"


# ----------------------------------------------------------------------------- validation reads the index


@pytest.mark.parametrize("name", sorted(CAMERAS))
def test_presentation_times_from_the_index_equal_the_demuxed_ones(recording, tmp_path, name):
    box, _ = both_ways(camera_sources(recording, name), tmp_path, CAMERAS[name].key)
    for path in box.files:
        times, tb, samples, inside = mp4.presentation_times(path)
        assert samples == inside == len(times)
        assert np.array_equal(times, demuxed_packet_times(path))


def test_write_videos_logs_why_a_camera_is_remuxed(tmp_path):
    cameras = [synthetic.CameraSpec("observation.images.top", "h264", encoder_options=LONG_GOP)]
    src = synthetic.make_recording(tmp_path / "rec", lengths=[20, 22, 21], cameras=cameras)
    episode = src / synthetic.LEROBOT_VIDEO_PATH.format(episode_chunk=0, video_key=cameras[0].key, episode_index=1)
    fragmented = remux(episode, tmp_path / "fragmented.mp4", {"movflags": "frag_keyframe+empty_moov"})
    fragmented.replace(episode)
    logs: list[str] = []
    result = write_videos(read_recording(src), tmp_path / "ds", ConversionSettings(), log=logs.append)
    assert logs[-1] == ("videos: camera 'observation.images.top': PyAV remux (packet by packet) instead of box copy: "
                        "episode_000001.mp4: fragmented MP4 (moof boxes)")
    # 20 frames with the edit list's millisecond rounding, then 22 frames of the fragmented file (no edit list)
    assert result.frames == 63
    from_s = result.placements.column("videos/observation.images.top/from_timestamp").to_pylist()
    assert from_s == [0.0, 10230 / 15360, (10230 + 22 * 512) / 15360]
