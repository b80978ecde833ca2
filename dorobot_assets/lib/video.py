"""videos/{video_key}/chunk-XXX/file-YYY.mp4: each camera's episode MP4s joined into few large files.

Stream copy (the default, reference notes §3.5): per camera, in sorted key order, the samples of
each episode MP4 go into the current output file, their timestamps shifted by the summed
durations of the episodes already in that file. No frame is decoded or re-encoded, so every frame
decodes to exactly the pixels of the source. ``from_timestamp`` is that running sum and
``to_timestamp`` = from + the episode's own duration (the stream duration FFmpeg reports, as
LeRobot records it); each episode's first frame sits exactly at its ``from_timestamp``.

How the bytes move: lib/mp4.py reads each source's sample tables from its ``moov`` box (the
media bytes are never read into Python), writes the joined file's index, and has the kernel copy
each source's samples in one call (``os.copy_file_range``). The result demuxes to exactly the
packets a PyAV remux of the same episodes gives (bytes, pts, dts, duration, key flags, time
base; tests/test_mp4.py compares them). A camera with any file that box copy does not handle
exactly (fragmented MP4, several tracks, an edit list FFmpeg would cut, sample descriptions that
differ within one output file, ...) is remuxed packet by packet with PyAV instead, as before,
and the log says why.

Placement: the size rule of lib/rollover.py over each source MP4's on-disk size; every camera
rolls over on its own. Parameter changes: two MP4s can share one file by stream copy only when
codec, resolution, pixel format, time base and codec configuration (extradata: H.264 SPS/PPS,
AV1 sequence header) are all equal; at each change a new output file starts
(``new_file_before``). We chose that over re-encoding: it keeps every frame bit-exact and costs
nothing, and readers resolve files per episode anyway. The ``reencode`` setting instead
transcodes every episode through the configured encoder (lib/encoders.py) and joins the results
with PyAV the same way (placement then follows the transcoded sizes).

Bad input is refused before anything is written: every source MP4 of every kept camera is
checked from its headers, which catches missing and unreadable files, a missing video stream,
files cut short (samples beyond the end of the file) and frame counts that differ from the
episode length; files box copy does not handle are read packet by packet with PyAV as before.
Memory: from the check until its files are written, a source keeps only its sample tables in
compact form (``mp4.Part``: a few bytes per frame), and a camera plans and writes one output file
at a time; the PyAV paths hold one packet (one frame when re-encoding). Cameras run on a
bounded thread pool.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, TypeVar

import pyarrow as pa

from dorobot_assets.lib import mp4
from dorobot_assets.lib.arrow import float64_array, int64_array
from dorobot_assets.lib.data import remove_unplanned
from dorobot_assets.lib.encoders import EncodeCancelled, VideoEncoder
from dorobot_assets.lib.errors import OutputError, RecordingError
from dorobot_assets.lib.fsutil import atomic_path, temp_name_for
from dorobot_assets.lib.rollover import FileSlot, group_by_slot, plan_rollover
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.v21 import Recording
from dorobot_assets.lib.v30 import MB, video_file

POLL_S = 0.2  # how often the main thread wakes up while cameras run (keeps it interruptible)
CANCEL_EVERY = 64  # packets between two looks at the cancel flag
PLACEMENT_FIELDS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")

T = TypeVar("T")
Log = Callable[[str], None]


def placement_columns(video_key: str) -> list[str]:
    """The meta/episodes columns of one camera, in LeRobot's order."""
    return [f"videos/{video_key}/{name}" for name in PLACEMENT_FIELDS]


@dataclass(frozen=True)
class StreamParams:
    """What must be equal for two MP4s to share one output file by stream copy."""

    codec: str
    width: int
    height: int
    pix_fmt: str
    time_base: Fraction
    config_digest: str  # hash of the codec extradata (SPS/PPS, AV1 sequence header)

    def changes_from(self, before: "StreamParams") -> list[str]:
        changes = []
        for name in ("codec", "pix_fmt", "time_base"):
            if getattr(self, name) != getattr(before, name):
                changes.append(f"{name.replace('_', ' ')} {getattr(before, name)} -> {getattr(self, name)}")
        if (self.width, self.height) != (before.width, before.height):
            changes.append(f"resolution {before.width}x{before.height} -> {self.width}x{self.height}")
        if self.config_digest != before.config_digest and not changes:
            changes.append("codec configuration (extradata)")
        return changes


# slots: a camera holds one per episode until its files are written; not frozen: a frozen
# dataclass sets each field through object.__setattr__, which doubles the cost of making one
@dataclass(slots=True)
class SourceVideo:
    """One episode MP4 of one camera, as checked."""

    camera: str
    episode_index: int
    path: Path
    size_bytes: int
    frames: int
    start: int  # pts of the first frame, in time-base ticks
    duration: int  # in time-base ticks
    params: StreamParams
    # its sample tables in compact form, for box copy; None when it was probed with PyAV (see remux_reason)
    part: mp4.Part | None = field(default=None, compare=False, repr=False)
    remux_reason: str | None = None  # why box copy cannot take this file

    @property
    def duration_s(self) -> Fraction:
        return self.duration * self.params.time_base


def _bad(code: str, path: Path, camera: str, episode: int, fault: str) -> RecordingError:
    return RecordingError(code, path, f"camera {camera!r}, episode {episode}: {fault}")


# ----------------------------------------------------------------------------- checking sources


def pix_fmt_stand_in(config_type: bytes, config: bytes) -> str:
    """The pixel format a decoder will report, from the codec configuration alone.

    The headers do not name a pixel format; chroma subsampling and bit depth are in the
    configuration (av1C fields, hvcC fields, the H.264 SPS inside avcC), so this gives FFmpeg's
    name for them (``yuv420p``, ``yuv422p10le``, ``gray``, ...). Range (``yuvj*``) is not
    derived; a range change still starts a new file, through the configuration digest.
    """
    chroma_depth = None
    try:
        if config_type == b"av1C" and len(config) >= 3:
            b = config[2]  # high_bitdepth, twelve_bit, monochrome, subsampling x, y
            depth = 12 if b & 0x20 else 10 if b & 0x40 else 8
            chroma = 0 if b & 0x10 else {(1, 1): 1, (1, 0): 2, (0, 0): 3}.get(((b >> 3) & 1, (b >> 2) & 1))
            chroma_depth = (chroma, depth)
        elif config_type == b"hvcC" and len(config) >= 19:
            chroma_depth = (config[16] & 3, 8 + (config[17] & 7))
        elif config_type == b"avcC":
            chroma_depth = _h264_chroma_depth(config)
    except (IndexError, ValueError):
        chroma_depth = None
    if chroma_depth is None or chroma_depth[0] is None:
        return "unknown"
    chroma, depth = chroma_depth
    name = "gray" if chroma == 0 else ("yuv420p", "yuv422p", "yuv444p")[chroma - 1]
    return name if depth == 8 else f"{name}{depth}le"


HIGH_H264_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def _h264_chroma_depth(avcc: bytes) -> tuple[int, int] | None:
    """(chroma_format_idc, luma bit depth) from the first SPS in an avcC box."""
    if len(avcc) < 8 or avcc[5] & 0x1F == 0:
        return None
    length = int.from_bytes(avcc[6:8], "big")
    nal = avcc[8: 8 + length]
    rbsp = bytearray()
    zeros = 0
    for byte in nal[1:]:  # drop emulation prevention bytes (00 00 03)
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        rbsp.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    bits = "".join(f"{b:08b}" for b in rbsp[:32])
    pos = 0

    def ue() -> int:
        nonlocal pos
        lead = bits.index("1", pos) - pos
        value = int(bits[pos + lead: pos + 2 * lead + 1], 2) - 1
        pos += 2 * lead + 1
        return value

    profile = rbsp[0]
    pos = 24  # profile_idc, constraint flags, level_idc
    ue()  # seq_parameter_set_id
    if profile not in HIGH_H264_PROFILES:
        return 1, 8
    chroma = ue()
    if chroma == 3:
        pos += 1  # separate_colour_plane_flag
    return chroma, 8 + ue()


def inspect_video(path: Path, camera: str, episode_index: int, expected_frames: int) -> SourceVideo:
    """Check one source MP4 from its headers (its media bytes are not read); raise RecordingError
    on any fault. A file box copy does not handle exactly is probed with PyAV instead
    (:func:`probe_video`) and carries the reason in ``remux_reason``."""
    path = path if isinstance(path, Path) else Path(path)
    try:
        movie = mp4.read_mp4(path)
    except mp4.Mp4Malformed as e:
        raise _bad("video_unreadable", path, camera, episode_index, f"cannot be opened as a video file: {e}") from e
    except OSError as e:
        if not path.is_file():
            raise _bad("missing_video_file", path, camera, episode_index, "the mp4 is missing") from e
        raise _bad("video_unreadable", path, camera, episode_index, f"cannot be opened as a video file: {e}") from e
    except mp4.Mp4Unsupported as e:
        return _probed_for_remux(path, camera, episode_index, expected_frames, str(e))
    videos = movie.video_tracks()
    if not videos:
        kinds = sorted({t.kind for t in movie.tracks}) or ["none"]
        raise _bad("no_video_stream", path, camera, episode_index,
                   f"has no video stream (streams found: {', '.join(kinds)})")
    track = videos[0]
    reason = _box_copy_obstacle(movie, track)
    if reason is not None:
        return _probed_for_remux(path, camera, episode_index, expected_frames, reason)
    declared = track.sample_count
    inside = movie.samples_within_file(track)
    if inside < declared:
        raise _bad("video_truncated", path, camera, episode_index,
                   f"the header declares {declared} frames but only {inside} can be read (truncated or corrupt)")
    try:
        timeline = mp4.demuxed_timeline(movie, track)
    except mp4.Mp4Unsupported as e:
        return _probed_for_remux(path, camera, episode_index, expected_frames, str(e))
    if timeline.frames != expected_frames:
        raise _bad("video_frame_count_mismatch", path, camera, episode_index,
                   f"has {timeline.frames} frames but episodes.jsonl says the episode has length {expected_frames}")
    params = _header_params(track.codec, track.width, track.height, track.config_type, track.config, track.timescale)
    return SourceVideo(
        camera=camera, episode_index=episode_index, path=path, size_bytes=movie.size, frames=timeline.frames,
        start=timeline.start, duration=timeline.duration, params=params, part=mp4.Part.of(movie, track, timeline),
    )


@functools.lru_cache(maxsize=256)  # a camera's episodes share one object (and one SPS parse) instead of one each
def _header_params(codec: str, width: int, height: int, config_type: bytes, config: bytes, timescale: int,
                   ) -> StreamParams:
    return StreamParams(
        codec=codec, width=width, height=height, pix_fmt=pix_fmt_stand_in(config_type, config),
        time_base=Fraction(1, timescale), config_digest=hashlib.sha256(config).hexdigest()[:16],
    )


def _box_copy_obstacle(movie: mp4.Mp4File, track: mp4.Mp4Track) -> str | None:
    """Why box copy cannot take this file (None: it can)."""
    if movie.fragmented:
        return "fragmented MP4 (moof boxes)"
    if len(movie.tracks) != 1:
        kinds = ", ".join(t.kind for t in movie.tracks)
        return f"{len(movie.tracks)} tracks ({kinds}); box copy keeps files with one video track"
    if track.codec is None:
        return f"codec {track.fourcc.decode('latin-1')!r} (box copy knows avc1, hvc1, hev1, av01)"
    if not track.config:
        return f"no {mp4.CODECS[track.fourcc][1].decode()} box in the sample description"
    if track.sample_entries != 1 or track.description_indices not in ((), (1,)):
        return f"{track.sample_entries} sample descriptions"
    if track.other_tables:
        return f"sample table boxes box copy would drop: {', '.join(track.other_tables)}"
    if not track.self_contained:
        return "the samples are in another file (dref)"
    if track.timescale <= 0:
        return "no media time scale"
    return None


def _probed_for_remux(path: Path, camera: str, episode_index: int, expected_frames: int, reason: str) -> SourceVideo:
    probed = probe_video(path, camera, episode_index, expected_frames)
    return dataclasses.replace(probed, remux_reason=f"{path.name}: {reason}")


def probe_video(path: Path, camera: str, episode_index: int, expected_frames: int) -> SourceVideo:
    """Open ``path`` with PyAV and read every packet (no decoding); raise RecordingError on any fault."""
    import av  # the fallback path only: the box copy reads no packet through FFmpeg

    path = Path(path)
    if not path.is_file():
        raise _bad("missing_video_file", path, camera, episode_index, "the mp4 is missing")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise _bad("video_unreadable", path, camera, episode_index, f"cannot be opened as a video file: {e}") from e
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise _bad("no_video_stream", path, camera, episode_index,
                       f"has no video stream (streams found: {', '.join(kinds)})")
        stream = container.streams.video[0]
        time_base = stream.time_base
        if not time_base:
            raise _bad("video_unreadable", path, camera, episode_index, "the video stream has no time base")
        count, first, end = 0, None, None
        try:
            for packet in container.demux(stream):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                count += 1
                if packet.pts is not None:
                    first = packet.pts if first is None else min(first, packet.pts)
                    stop = packet.pts + (packet.duration or 0)
                    end = stop if end is None else max(end, stop)
        except av.error.FFmpegError as e:
            raise _bad("video_unreadable", path, camera, episode_index,
                       f"packet {count} cannot be read: {e}") from e
        declared = stream.frames
        if declared and declared != count:
            raise _bad("video_truncated", path, camera, episode_index,
                       f"the header declares {declared} frames but only {count} can be read (truncated or corrupt)")
        if count != expected_frames:
            raise _bad("video_frame_count_mismatch", path, camera, episode_index,
                       f"has {count} frames but episodes.jsonl says the episode has length {expected_frames}")
        start = stream.start_time if stream.start_time is not None else (first or 0)
        # LeRobot's duration: the stream's, else the container's (in microseconds).
        if stream.duration:
            duration = int(stream.duration)
        elif container.duration:
            duration = round(Fraction(container.duration, 1_000_000) / time_base)
        else:
            duration = (end or 0) - start
        if duration <= 0:
            raise _bad("video_unreadable", path, camera, episode_index, "the video stream has no duration")
        cc = stream.codec_context
        params = StreamParams(
            codec=cc.codec.canonical_name if cc.codec is not None else "unknown",
            width=int(stream.width), height=int(stream.height),
            pix_fmt=str(cc.pix_fmt or "unknown"), time_base=Fraction(time_base),
            config_digest=hashlib.sha256(bytes(cc.extradata or b"")).hexdigest()[:16],
        )
    return SourceVideo(
        camera=camera, episode_index=episode_index, path=path, size_bytes=path.stat().st_size,
        frames=count, start=int(start), duration=duration, params=params,
    )


def probe_camera(rec: Recording, video_key: str, cancel: threading.Event | None = None) -> list[SourceVideo]:
    sources = []
    for ep in rec.episodes:
        if cancel is not None and cancel.is_set():
            raise EncodeCancelled(f"camera {video_key!r}: cancelled")
        path = ep.video_paths.get(video_key)
        if path is None:
            raise RecordingError("missing_video_file", rec.root, f"camera {video_key!r}: episode {ep.index} has no mp4 path")
        sources.append(inspect_video(path, video_key, ep.index, ep.length))
    return sources


def new_file_flags(sources: list[SourceVideo]) -> list[bool]:
    """True where an episode cannot be stream-copied into the file of the episode before it."""
    flags = [False] * len(sources)
    for i in range(1, len(sources)):
        before, params = sources[i - 1].params, sources[i].params
        flags[i] = params is not before and params != before  # usually one shared object: no field compare
    return flags


# ----------------------------------------------------------------------------- writing


class _OutputFile:
    """One output MP4 filled by PyAV remux, packet by packet (the fallback of box copy, and the
    join of re-encoded episodes); visible under its final name only once complete."""

    def __init__(self, final: Path, cancel: threading.Event | None):
        self.final = final
        self.cancel = cancel
        self.frames = 0
        self._offset = 0  # ticks: summed durations of the episodes already in the file
        self._params: StreamParams | None = None
        self._stream = None

    def __enter__(self) -> "_OutputFile":
        self._atomic = atomic_path(self.final)
        tmp = self._atomic.__enter__()
        import av

        try:
            # faststart (index before the frames) as LeRobot writes them: readers streaming over
            # HTTP can seek without fetching the whole file first.
            self._out = av.open(str(tmp), "w", format="mp4", options={"movflags": "faststart"})
        except BaseException as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._out.close()
        except Exception:
            if exc_type is None:
                raise
        finally:
            self._atomic.__exit__(exc_type, exc, tb)
        return False

    def append(self, src: SourceVideo) -> tuple[Fraction, Fraction]:
        """Copy every packet of ``src`` after what the file holds; returns (from, to) in seconds."""
        if self._params is not None and src.params != self._params:
            raise OutputError(f"{self.final}: refusing to stream-copy {src.path} with other parameters "
                              f"({', '.join(src.params.changes_from(self._params))})")
        import av

        shift = self._offset - src.start
        copied = 0
        with av.open(str(src.path)) as inp:
            ist = inp.streams.video[0]
            if self._stream is None:
                self._stream = self._out.add_stream_from_template(ist, opaque=True)
                self._params = src.params
            for packet in inp.demux(ist):
                if packet.dts is None:
                    continue
                if copied % CANCEL_EVERY == 0 and self.cancel is not None and self.cancel.is_set():
                    raise EncodeCancelled(f"{self.final}: cancelled")
                if packet.pts is not None:
                    packet.pts += shift
                packet.dts += shift
                packet.stream = self._stream
                self._out.mux(packet)
                copied += 1
        if copied != src.frames:
            raise RecordingError("video_changed", src.path,
                                 f"had {src.frames} frames when checked, {copied} when copied: the file changed")
        tb = src.params.time_base
        begin = self._offset * tb
        self._offset += src.duration
        self.frames += copied
        return begin, begin + src.duration_s


@dataclass
class CameraResult:
    video_key: str
    slots: list[FileSlot]
    from_s: list[Fraction]
    to_s: list[Fraction]
    files: list[Path] = field(default_factory=list)
    frames: int = 0
    notes: list[str] = field(default_factory=list)
    written: list[StreamParams] = field(default_factory=list)  # per episode, as written
    remux_reason: str | None = None  # why the files were remuxed with PyAV (None: box copy)


def _change_note(video_key: str, src: SourceVideo, before: SourceVideo, slot: FileSlot) -> str:
    return (f"camera {video_key!r}: episode {src.episode_index} starts a new file "
            f"{video_file(video_key, slot.chunk_index, slot.file_index)} because its "
            f"{', '.join(src.params.changes_from(before.params))} (stream copy cannot mix them)")


def copy_camera(
    video_key: str, sources: list[SourceVideo], dataset_root: Path, settings: ConversionSettings,
    cancel: threading.Event | None = None, *, remux: bool = False,
) -> CameraResult:
    """Stream-copy one camera's episodes into its output files: box copy (lib/mp4.py) when every
    file allows it, else (or with ``remux``) PyAV remux packet by packet; ``remux_reason`` of the
    result says why box copy was not used."""
    flags = new_file_flags(sources)
    slots = plan_rollover(
        [s.size_bytes / MB for s in sources], settings.video_file_size_mb,
        files_per_chunk=settings.files_per_chunk, new_file_before=flags,
    )
    result = CameraResult(video_key, slots, [Fraction(0)] * len(sources), [Fraction(0)] * len(sources))
    for i, flag in enumerate(flags):
        if flag:
            result.notes.append(_change_note(video_key, sources[i], sources[i - 1], slots[i]))
    groups = group_by_slot(slots)
    result.remux_reason = "PyAV remux requested" if remux else _box_copy_obstacle_of(sources, groups)
    for slot, members in groups:
        final = Path(dataset_root) / video_file(video_key, slot.chunk_index, slot.file_index)
        if result.remux_reason is None:
            begins, frames = _write_box_file(final, [sources[i].part for i in members], cancel)
            tb = sources[members[0]].params.time_base  # the sources of one file share their parameters
            num, den = tb.numerator, tb.denominator
            for i, begin in zip(members, begins):  # one Fraction each: their arithmetic is the costly part
                result.from_s[i] = Fraction(begin * num, den)
                result.to_s[i] = Fraction((begin + sources[i].duration) * num, den)
            result.frames += frames
        else:
            with _OutputFile(final, cancel) as out:
                for i in members:
                    result.from_s[i], result.to_s[i] = out.append(sources[i])
            result.frames += out.frames
        result.files.append(final)
    return result


def _box_copy_obstacle_of(sources: list[SourceVideo], groups: list[tuple[FileSlot, list[int]]]) -> str | None:
    """Why the camera cannot be written by box copy exactly (None: it can), decided for every
    output file before the first is written, from a few numbers per source."""
    reason = next((s.remux_reason for s in sources if s.remux_reason), None)
    if reason is not None:
        return reason
    for _, members in groups:
        reason = mp4.concatenation_obstacle([sources[i].part for i in members])
        if reason is not None:
            return reason
    return None


def _write_box_file(final: Path, parts: list[mp4.Part], cancel: threading.Event | None) -> tuple[list[int], int]:
    """Plan and write one output file; returns where each part begins (ticks) and the frames.
    Its tables are freed on return, before the camera's next file is planned."""
    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise EncodeCancelled(f"{final}: cancelled")

    plan = mp4.plan_concatenation(parts)
    with atomic_path(final) as tmp:
        try:
            mp4.write_concatenation(tmp, plan, check_cancel)
        except mp4.SourceChanged as e:
            raise RecordingError("video_changed", e.path, str(e)) from e
    return plan.begins, plan.frames


def reencode_camera(
    video_key: str, sources: list[SourceVideo], dataset_root: Path, settings: ConversionSettings,
    encoder: VideoEncoder, fps: float, cancel: threading.Event | None = None,
) -> CameraResult:
    """Transcode each episode through ``encoder``, then stream-copy the results into output files.

    One transcoded episode exists at a time (a temporary file beside the outputs). The rollover
    rule is online (an item's slot depends only on the items before it), so the slot of episode i
    is the last entry of the plan over episodes 0..i.
    """
    sizes: list[float] = []
    flags: list[bool] = []
    done: list[SourceVideo] = []
    result = CameraResult(video_key, [], [], [])
    camera_dir = Path(dataset_root) / "videos" / video_key
    camera_dir.mkdir(parents=True, exist_ok=True)
    current: _OutputFile | None = None
    current_slot: FileSlot | None = None
    try:
        for src in sources:
            tmp = temp_name_for(camera_dir / f"episode_{src.episode_index:06d}.mp4")
            try:
                encoder.transcode(src.path, tmp, fps=fps, cancel=cancel)
                try:
                    encoded = probe_video(tmp, video_key, src.episode_index, src.frames)
                except RecordingError as e:
                    raise OutputError(f"{encoder.describe()} produced a bad file from {src.path}: {e.fault}") from e
                sizes.append(encoded.size_bytes / MB)
                flags.append(bool(done) and encoded.params != done[-1].params)
                slot = plan_rollover(sizes, settings.video_file_size_mb,
                                     files_per_chunk=settings.files_per_chunk, new_file_before=flags)[-1]
                if flags[-1]:
                    result.notes.append(_change_note(video_key, encoded, done[-1], slot))
                if current is None or slot != current_slot:
                    if current is not None:
                        finished, current = current, None
                        finished.__exit__(None, None, None)
                        result.files.append(finished.final)
                        result.frames += finished.frames
                    current = _OutputFile(Path(dataset_root) / video_file(video_key, slot.chunk_index, slot.file_index), cancel)
                    current.__enter__()
                    current_slot = slot
                begin, end = current.append(encoded)
            finally:
                tmp.unlink(missing_ok=True)
            result.slots.append(slot)
            result.from_s.append(begin)
            result.to_s.append(end)
            result.written.append(encoded.params)
            done.append(encoded)
        if current is not None:
            finished, current = current, None
            finished.__exit__(None, None, None)
            result.files.append(finished.final)
            result.frames += finished.frames
    except BaseException as e:
        if current is not None:
            current.__exit__(type(e), e, e.__traceback__)
        raise
    return result


def run_bounded(
    tasks: dict[str, Callable[[], T]], workers: int, cancel: threading.Event, on_abort: Callable[[], object],
) -> dict[str, T]:
    """Run ``tasks`` on at most ``workers`` threads; the first failure (or an interrupt of the
    calling thread, e.g. Dagster terminating the run) sets ``cancel``, calls ``on_abort`` (which
    kills encoder subprocesses) and waits for every thread before re-raising."""
    results: dict[str, T] = {}
    if workers <= 1 or len(tasks) <= 1:
        try:
            for key, fn in tasks.items():
                results[key] = fn()
        except BaseException:
            cancel.set()
            on_abort()
            raise
        return results
    pool = ThreadPoolExecutor(max_workers=min(workers, len(tasks)), thread_name_prefix="videos")
    futures: dict[Future, str] = {}
    try:
        futures = {pool.submit(fn): key for key, fn in tasks.items()}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in done if f.exception() is not None]
            if errors:
                # Prefer the fault that caused the stop over the cancellations it triggers.
                errors.sort(key=lambda e: isinstance(e, EncodeCancelled))
                raise errors[0]
            for f in done:
                results[futures[f]] = f.result()
    except BaseException:
        cancel.set()
        on_abort()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


@dataclass
class VideoResult:
    placements: pa.Table  # episode_index + videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}
    files: list[Path] = field(default_factory=list)
    bytes_written: int = 0
    frames: int = 0
    dropped_cameras: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mode: str = "copy"  # copy | reencode
    encoder: str | None = None  # the encoder's description when re-encoding
    # info.json features[<key>]["info"] updates: re-encoded cameras carry their new codec
    features_info: dict[str, dict] = field(default_factory=dict)


def write_videos(
    rec: Recording, dataset_root: Path, settings: ConversionSettings, encoder: VideoEncoder | None = None,
    *, log: Log | None = None,
) -> VideoResult:
    """Write every kept camera's v3.0 video files; returns the per-episode placements.

    ``encoder`` is used only when ``settings.reencode`` is set (then it is required).
    """
    dataset_root = Path(dataset_root)
    keys = rec.video_keys
    n = len(rec.episodes)
    cancel = threading.Event()
    abort = encoder.kill_running if encoder is not None else (lambda: 0)
    if settings.reencode and keys and encoder is None:
        raise OutputError("reencode is set but no video encoder was given")

    # 1. Validate every source MP4 before writing anything.
    sources = run_bounded(
        {k: (lambda k=k: probe_camera(rec, k, cancel)) for k in keys}, settings.video_workers, cancel, abort,
    )
    reencode = settings.reencode and bool(keys)
    if reencode:
        encoder.prepare()  # e.g. no h264_ascend: fail (or fall back) before writing
    if log and keys:
        what = f"re-encoding with {encoder.describe()}" if reencode else "stream copy"
        log(f"videos: {len(keys)} cameras x {n} episodes checked; {what}, {settings.video_workers} workers")

    # 2. Write, cameras in parallel.
    def camera_task(key: str) -> Callable[[], CameraResult]:
        if reencode:
            return lambda: reencode_camera(key, sources[key], dataset_root, settings, encoder, rec.fps, cancel)
        return lambda: copy_camera(key, sources[key], dataset_root, settings, cancel)

    cameras = run_bounded({k: camera_task(k) for k in keys}, settings.video_workers, cancel, abort)

    files = [f for k in keys for f in cameras[k].files]
    remove_unplanned(dataset_root / "videos", files, "*.mp4")
    columns: dict[str, pa.Array] = {"episode_index": int64_array([e.index for e in rec.episodes])}
    notes: list[str] = []
    for k in keys:
        cam = cameras[k]
        c_chunk, c_file, c_from, c_to = placement_columns(k)
        columns[c_chunk] = int64_array([s.chunk_index for s in cam.slots])
        columns[c_file] = int64_array([s.file_index for s in cam.slots])
        columns[c_from] = float64_array([float(t) for t in cam.from_s])
        columns[c_to] = float64_array([float(t) for t in cam.to_s])
        notes.extend(cam.notes)
        if log:
            log(f"videos: camera {k!r}: {n} episodes, {cam.frames} frames into {len(cam.files)} files")
            if cam.remux_reason is not None and not reencode:
                log(f"videos: camera {k!r}: PyAV remux (packet by packet) instead of box copy: {cam.remux_reason}")
    features_info: dict[str, dict] = {}
    if reencode:
        notes.extend(encoder.notes)
        for k in keys:
            codecs = sorted({p.codec for p in cameras[k].written})
            pix_fmts = sorted({p.pix_fmt for p in cameras[k].written})
            if len(codecs) == 1 and len(pix_fmts) == 1:
                features_info[k] = {"video.codec": codecs[0], "video.pix_fmt": pix_fmts[0]}
            else:
                notes.append(f"camera {k!r}: re-encoded episodes differ ({codecs}, {pix_fmts}); "
                             "info.json keeps the source's video.codec")
    video_features = [k for k in rec.dropped_features if rec.info.get("features", {}).get(k, {}).get("dtype") == "video"]
    for k in video_features:
        notes.append(f"camera {k!r} is declared in info.json but has no mp4 files: left out of the output "
                     "(missing_cameras=drop)")
    return VideoResult(
        placements=pa.table(columns),
        files=files,
        bytes_written=sum(f.stat().st_size for f in files),
        frames=sum(cameras[k].frames for k in keys),
        dropped_cameras=video_features,
        notes=notes,
        mode="reencode" if reencode else "copy",
        encoder=encoder.describe() if reencode else None,
        features_info=features_info,
    )
