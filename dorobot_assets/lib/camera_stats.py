"""Decode the frames camera statistics are computed from, straight from a source episode mp4.

LeRobot's recorder computes a camera's per-episode stats from sampled frames (notes §4.3:
``sample_indices``, ``downsample`` in :mod:`synthetic`). A converter only has the encoded mp4s,
so we decode exactly those frames. The packets are indexed first (demuxing only, no decoding) to
learn each frame's pts and where the key frames are; the needed frames are then decoded in runs,
each starting with one seek to the key frame at or before its first frame. A run decodes on to
the next needed frame when a seek would skip no more than SEEK_COST_FRAMES frames. Every needed
frame is decoded once; long-GOP H.264 with B-frames is handled like all-intra H.264 or AV1 g=2.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np

from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.synthetic import downsample, sample_indices

PIXEL_LEVELS = 256  # uint8 RGB
# A seek (demuxer seek + decoder flush) costs about as much as decoding two frames (measured
# with PyAV 18 on AV1/dav1d and H.264): decoding on through at most that many unneeded frames
# is cheaper than seeking past them.
SEEK_COST_FRAMES = 2


@dataclass(frozen=True)
class DecodeRun:
    seek_frame: int  # the key frame (presentation index) the run seeks to
    frames: tuple[int, ...]  # needed frames, ascending, decoded after that one seek


def plan_decode(keyframes: Sequence[int], needed: Sequence[int], seek_cost_frames: int = SEEK_COST_FRAMES
                ) -> list[DecodeRun]:
    """Group ``needed`` frame indices into runs that each seek once to the last key frame at or
    before their first frame. A needed frame joins the current run when seeking to its key frame
    would skip at most ``seek_cost_frames`` frames after the previous needed one."""
    keys = sorted(set(keyframes))
    runs: list[tuple[int, list[int]]] = []
    last = -2
    for frame in sorted(set(needed)):
        at = bisect.bisect_right(keys, frame) - 1
        if at < 0:
            raise ValueError(f"frame {frame} has no key frame at or before it")
        key = keys[at]
        if runs and key - last - 1 <= seek_cost_frames:
            runs[-1][1].append(frame)
        else:
            runs.append((key, [frame]))
        last = frame
    return [DecodeRun(key, tuple(frames)) for key, frames in runs]


@dataclass
class VideoIndex:
    pts: list[int]  # per frame, presentation order
    keyframes: list[int]  # frame indices of key frames

    def frame_of(self) -> dict[int, int]:
        return {p: i for i, p in enumerate(self.pts)}


@dataclass
class DecodeCounts:
    decoded: int = 0  # frames the decoder produced
    seeks: int = 0
    runs: list[DecodeRun] = field(default_factory=list)


def _unreadable(path: Path, what: str, ex: Exception | None = None) -> RecordingError:
    detail = f": {ex}" if ex is not None else ""
    return RecordingError("video_unreadable", path, f"{what}{detail}")


def index_video(container: av.container.InputContainer, path: Path) -> VideoIndex:
    if not container.streams.video:
        raise _unreadable(path, "has no video stream")
    stream = container.streams.video[0]
    packets = []
    for packet in container.demux(stream):
        if packet.pts is not None:
            packets.append((packet.pts, packet.is_keyframe))
    packets.sort()
    pts = [p for p, _ in packets]
    if len(set(pts)) != len(pts):
        raise _unreadable(path, "two packets share one presentation timestamp")
    keyframes = [i for i, (_, key) in enumerate(packets) if key]
    if not keyframes or keyframes[0] != 0:
        raise _unreadable(path, "the first frame is not a key frame")
    return VideoIndex(pts=pts, keyframes=keyframes)


def decode_frames(path: Path, needed: Sequence[int], length: int, counts: DecodeCounts | None = None
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame index, RGB uint8 array HxWx3)`` for each needed frame, in ascending order.

    Raises RecordingError when the mp4 cannot be read or its frame count differs from the
    episode's ``length`` (stats of other frames than the data rows would be meaningless)."""
    counts = counts if counts is not None else DecodeCounts()
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as ex:
        raise _unreadable(path, "cannot be opened", ex) from ex
    with container:
        try:
            index = index_video(container, path)
        except av.FFmpegError as ex:
            raise _unreadable(path, "cannot be demuxed", ex) from ex
        if len(index.pts) != length:
            raise RecordingError(
                "video_length_mismatch", path,
                f"has {len(index.pts)} frames, the episode's data has {length} rows",
            )
        frame_of = index.frame_of()
        stream = container.streams.video[0]
        counts.runs = plan_decode(index.keyframes, needed)
        for run in counts.runs:
            yield from _decode_run(container, stream, index, frame_of, run, counts, path)


def _decoded(container, stream, frame_of: dict[int, int], counts: DecodeCounts, path: Path
             ) -> Iterator[tuple[int, av.VideoFrame]]:
    """Frames from the current demuxer position on, with their frame index, in presentation order."""
    for packet in container.demux(stream):
        for frame in packet.decode():
            counts.decoded += 1
            i = frame_of.get(frame.pts)
            if i is None:
                raise _unreadable(path, f"decoded a frame at pts {frame.pts}, which no packet carries")
            yield i, frame


def _decode_run(container, stream, index: VideoIndex, frame_of: dict[int, int], run: DecodeRun,
                counts: DecodeCounts, path: Path) -> Iterator[tuple[int, np.ndarray]]:
    remaining = set(run.frames)
    # Seeking lands on the key frame at or before the target; should a demuxer land later, the
    # run is decoded again from the start of the file rather than missing a frame.
    for seek_to in dict.fromkeys((run.seek_frame, 0)):
        try:
            container.seek(index.pts[seek_to], stream=stream, backward=True, any_frame=False)
            counts.seeks += 1
            frames = _decoded(container, stream, frame_of, counts, path)
            try:
                for i, frame in frames:
                    if i > min(remaining):
                        break
                    if i in remaining:
                        remaining.discard(i)
                        yield i, frame.to_ndarray(format="rgb24")
                        if not remaining:
                            return
                else:
                    raise _unreadable(path, f"frames {sorted(remaining)[:5]} were not produced by the decoder")
            finally:
                frames.close()
        except av.FFmpegError as ex:
            raise _unreadable(path, "cannot be decoded", ex) from ex
    raise _unreadable(path, f"frames {sorted(remaining)[:5]} could not be reached by seeking")


@dataclass
class CameraSample:
    level_counts: np.ndarray  # (3, 256): per channel, how many sampled pixels have each level
    frames: int  # frames sampled (LeRobot's ``count``)
    decode: DecodeCounts


def sampled_level_counts(path: Path, length: int) -> CameraSample:
    """Pixel-level counts over the frames LeRobot samples from an episode of ``length`` frames,
    each frame strided as LeRobot downsamples it; a frame sampled twice counts twice."""
    picks, multiplicity = np.unique(sample_indices(length), return_counts=True)
    weight = dict(zip(picks.tolist(), multiplicity.tolist()))
    counts = np.zeros((3, PIXEL_LEVELS), np.int64)
    decode = DecodeCounts()
    for i, rgb in decode_frames(path, picks.tolist(), length, decode):
        small = downsample(rgb)
        for c in range(3):
            counts[c] += weight[i] * np.bincount(small[..., c].ravel(), minlength=PIXEL_LEVELS)
    return CameraSample(level_counts=counts, frames=int(multiplicity.sum()), decode=decode)
