"""videos/{video_key}/chunk-XXX/file-YYY.mp4: each camera's episode MP4s joined into few large files.

Stream copy (the default, reference notes §3.5): per camera, in sorted key order, the packets of
each episode MP4 are remuxed with PyAV into the current output file, their timestamps shifted by
the summed durations of the episodes already in that file. No frame is decoded or re-encoded, so
every frame decodes to exactly the pixels of the source. ``from_timestamp`` is that running sum
and ``to_timestamp`` = from + the episode's own duration (``stream.duration * time_base``), as
LeRobot records them; each episode's first frame sits exactly at its ``from_timestamp``.

Placement: the size rule of lib/rollover.py over each source MP4's on-disk size; every camera
rolls over on its own. Parameter changes: two MP4s can share one file by stream copy only when
codec, resolution, pixel format, time base and codec configuration (extradata: H.264 SPS/PPS,
AV1 sequence header) are all equal; at each change a new output file starts
(``new_file_before``). We chose that over re-encoding: it keeps every frame bit-exact and costs
nothing, and readers resolve files per episode anyway. The ``reencode`` setting instead
transcodes every episode through the configured encoder (lib/encoders.py) and joins the results
the same way (placement then follows the transcoded sizes).

Bad input is refused before anything is written: every source MP4 of every kept camera is
opened and all its packets are read (not decoded), which catches missing, unreadable and
truncated files, a missing video stream and frame counts that differ from the episode length.
Memory stays at one packet (one frame when re-encoding); cameras run on a bounded thread pool.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, TypeVar

import av
import pyarrow as pa

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


@dataclass(frozen=True)
class SourceVideo:
    """One episode MP4 of one camera, as probed."""

    camera: str
    episode_index: int
    path: Path
    size_bytes: int
    frames: int
    start: int  # pts of the first frame, in time-base ticks
    duration: int  # in time-base ticks
    params: StreamParams

    @property
    def duration_s(self) -> Fraction:
        return self.duration * self.params.time_base


def _bad(code: str, path: Path, camera: str, episode: int, fault: str) -> RecordingError:
    return RecordingError(code, path, f"camera {camera!r}, episode {episode}: {fault}")


def probe_video(path: Path, camera: str, episode_index: int, expected_frames: int) -> SourceVideo:
    """Open ``path`` and read every packet (no decoding); raise RecordingError on any fault."""
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
        sources.append(probe_video(path, video_key, ep.index, ep.length))
    return sources


def new_file_flags(sources: list[SourceVideo]) -> list[bool]:
    """True where an episode cannot be stream-copied into the file of the episode before it."""
    return [i > 0 and sources[i].params != sources[i - 1].params for i in range(len(sources))]


# ----------------------------------------------------------------------------- writing


class _OutputFile:
    """One output MP4 filled by stream copy; visible under its final name only once complete."""

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


def _change_note(video_key: str, src: SourceVideo, before: SourceVideo, slot: FileSlot) -> str:
    return (f"camera {video_key!r}: episode {src.episode_index} starts a new file "
            f"{video_file(video_key, slot.chunk_index, slot.file_index)} because its "
            f"{', '.join(src.params.changes_from(before.params))} (stream copy cannot mix them)")


def copy_camera(
    video_key: str, sources: list[SourceVideo], dataset_root: Path, settings: ConversionSettings,
    cancel: threading.Event | None = None,
) -> CameraResult:
    """Stream-copy one camera's episodes into its output files."""
    flags = new_file_flags(sources)
    slots = plan_rollover(
        [s.size_bytes / MB for s in sources], settings.video_file_size_mb,
        files_per_chunk=settings.files_per_chunk, new_file_before=flags,
    )
    result = CameraResult(video_key, slots, [Fraction(0)] * len(sources), [Fraction(0)] * len(sources))
    for i, flag in enumerate(flags):
        if flag:
            result.notes.append(_change_note(video_key, sources[i], sources[i - 1], slots[i]))
    for slot, members in group_by_slot(slots):
        final = Path(dataset_root) / video_file(video_key, slot.chunk_index, slot.file_index)
        with _OutputFile(final, cancel) as out:
            for i in members:
                result.from_s[i], result.to_s[i] = out.append(sources[i])
        result.files.append(final)
        result.frames += out.frames
    return result


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
    columns: dict[str, pa.Array] = {"episode_index": pa.array([e.index for e in rec.episodes], pa.int64())}
    notes: list[str] = []
    for k in keys:
        cam = cameras[k]
        c_chunk, c_file, c_from, c_to = placement_columns(k)
        columns[c_chunk] = pa.array([s.chunk_index for s in cam.slots], pa.int64())
        columns[c_file] = pa.array([s.file_index for s in cam.slots], pa.int64())
        columns[c_from] = pa.array([float(t) for t in cam.from_s], pa.float64())
        columns[c_to] = pa.array([float(t) for t in cam.to_s], pa.float64())
        notes.extend(cam.notes)
        if log:
            log(f"videos: camera {k!r}: {n} episodes, {cam.frames} frames into {len(cam.files)} files")
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
