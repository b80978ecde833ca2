"""Pixel-level counts of the frames camera statistics are computed from, decoded straight from the
source episode mp4s, on every core.

LeRobot's recorder computes a camera's per-episode stats from sampled frames (notes §4.3); a
converter only has the encoded mp4s, so it decodes exactly those frames. An mp4 is demuxed once
(packets only, no decoding) to learn each frame's presentation index (the rank of its pts) and
where the key frames are. Then only the packets the needed frames depend on are fed to the
decoder, in file order: for each needed frame, the packets from the key frame that starts its
group of pictures up to its own packet. Skipping the other packets costs nothing and needs no
container seek, because the packets are already in memory; every needed frame is decoded once.
Long-GOP H.264 with B-frames is handled like all-intra H.264 or AV1 g=2.

Statistics need only how many sampled pixels have each level per channel, not the frames, so
:class:`LevelCounter` counts them as frames arrive and a job returns (3, 256) counts.

Jobs run on decoding threads in helper processes, two threads each (:class:`LevelCounting`).
A helper is a fresh interpreter started with ``-c`` that imports only numpy, PyAV and this
module: ``multiprocessing``'s spawn and forkserver start methods would re-import the parent's
main script in every child (for ``dagster asset materialize`` that is all of Dagster, ~60 MiB
and a second per process), and fork is unsafe in a process with threads.
"""

from __future__ import annotations

import bisect
import functools
import os
import pickle
import queue
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

import dorobot_assets
from dorobot_assets.lib.errors import RecordingError

if TYPE_CHECKING:
    import av

PIXEL_LEVELS = 256  # uint8 RGB
CHANNELS = 3
# LeRobot strides frames whose larger side is at least this many pixels (notes §4.3).
DOWNSAMPLE_MIN_SIDE = 300
DOWNSAMPLE_TARGET = 150
# Jobs per batch sent to a helper: a round trip costs ~1 ms, a job (one mp4) ~0.1 s; small
# batches let the threads finish together.
MAX_JOBS_PER_BATCH = 8
BATCHES_PER_THREAD = 8
# Decoding threads per helper process: the GIL-bound part of a frame's work (~1/4) lets two
# threads share a process nearly as well as two processes; more would queue on the GIL.
THREADS_PER_HELPER = 2


def lerobot_sample_indices(length: int) -> np.ndarray:
    """The frames LeRobot samples for an episode's camera stats (notes §4.3): ``k =
    max(min(100, L), min(int(L**0.75), 10000))`` indices ``round(linspace(0, L - 1, k))``."""
    k = max(min(100, length), min(int(length**0.75), 10000))
    return np.round(np.linspace(0, length - 1, k)).astype(int)


def lerobot_stride(height: int, width: int) -> int:
    """LeRobot's downsampling for stats (notes §4.3): a frame whose larger side is at least 300
    pixels keeps every step-th row and column, step = ``int(width / 150)`` when it is wider than
    high, else ``int(height / 150)``; smaller frames are kept whole (step 1)."""
    if max(height, width) < DOWNSAMPLE_MIN_SIDE:
        return 1
    return int(width / DOWNSAMPLE_TARGET) if width > height else int(height / DOWNSAMPLE_TARGET)


# ----------------------------------------------------------------------------- demuxing


@dataclass
class VideoPackets:
    """One mp4's video packets in decode (file) order, with each frame's presentation index."""

    packets: list  # av.Packet, decode order
    presentation: list[int]  # per packet: the rank of its pts among all packets'
    keyframe: list[bool]  # per packet

    def __len__(self) -> int:
        return len(self.packets)


@dataclass
class DecodeCounts:
    decoded: int = 0  # frames the decoder produced
    fed: int = 0  # packets sent to the decoder
    runs: list[range] = field(default_factory=list)  # packet ranges fed, decode order


def _unreadable(path: Path, what: str, ex: Exception | None = None) -> RecordingError:
    detail = f": {ex}" if ex is not None else ""
    return RecordingError("video_unreadable", path, f"{what}{detail}")


def demux_packets(container: av.container.InputContainer, path: Path) -> VideoPackets:
    if not container.streams.video:
        raise _unreadable(path, "has no video stream")
    stream = container.streams.video[0]
    packets = [p for p in container.demux(stream) if p.pts is not None and p.size]
    pts = [p.pts for p in packets]
    order = sorted(range(len(pts)), key=pts.__getitem__)
    presentation = [0] * len(pts)
    for rank, position in enumerate(order):
        presentation[position] = rank
    if len(set(pts)) != len(pts):
        raise _unreadable(path, "two packets share one presentation timestamp")
    keyframe = [bool(p.is_keyframe) for p in packets]
    if packets and not keyframe[0]:
        raise _unreadable(path, "the first packet is not a key frame")
    return VideoPackets(packets, presentation, keyframe)


def plan_decode(keyframe: Sequence[bool], presentation: Sequence[int], needed: Sequence[int]) -> list[range]:
    """The packet ranges (decode order) to feed the decoder so that the frames ``needed``
    (presentation indices) come out: for each, from the key frame that starts its group of
    pictures to its own packet. A frame shown before its group's key frame (a leading picture of
    an open GOP) may reference the previous group, so its range starts one key frame earlier.
    Overlapping or touching ranges are merged: each packet is fed at most once."""
    keys = [i for i, k in enumerate(keyframe) if k]
    position_of = {p: i for i, p in enumerate(presentation)}
    spans = []
    for frame in sorted(set(needed)):
        position = position_of[frame]
        at = bisect.bisect_right(keys, position) - 1
        if at < 0:
            raise ValueError(f"frame {frame} has no key frame before it")
        if presentation[position] < presentation[keys[at]] and at > 0:
            at -= 1
        spans.append((keys[at], position))
    spans.sort()
    runs: list[list[int]] = []
    for start, stop in spans:
        if runs and start <= runs[-1][1] + 1:
            runs[-1][1] = max(runs[-1][1], stop)
        else:
            runs.append([start, stop])
    return [range(start, stop + 1) for start, stop in runs]


def _open(path: Path) -> av.container.InputContainer:
    import av  # here, not at the top: the parent of the helper processes never decodes

    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as ex:
        raise _unreadable(path, "cannot be opened", ex) from ex


def decoded_frames(path: Path, needed: Sequence[int], length: int, counts: DecodeCounts | None = None
                   ) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield ``(frame index, decoded frame)`` for each needed frame, in presentation order.

    Raises RecordingError when the mp4 cannot be read or its frame count differs from the
    episode's ``length`` (stats of other frames than the data rows would be meaningless)."""
    import av

    counts = counts if counts is not None else DecodeCounts()
    path = Path(path)
    with _open(path) as container:
        try:
            video = demux_packets(container, path)
        except av.FFmpegError as ex:
            raise _unreadable(path, "cannot be demuxed", ex) from ex
        if len(video) != length:
            raise RecordingError(
                "video_length_mismatch", path, f"has {len(video)} frames, the episode's data has {length} rows",
            )
        index_of_pts = {p.pts: i for p, i in zip(video.packets, video.presentation)}
        wanted = set(needed)
        codec = container.streams.video[0].codec_context
        codec.thread_count = 1  # one decoding thread per core does the parallelism
        counts.runs = plan_decode(video.keyframe, video.presentation, needed)

        def emerged(frames) -> Iterator[tuple[int, av.VideoFrame]]:
            for frame in frames:
                counts.decoded += 1
                i = index_of_pts.get(frame.pts)
                if i is None:
                    raise _unreadable(path, f"decoded a frame at pts {frame.pts}, which no packet carries")
                if i in wanted:
                    wanted.discard(i)
                    yield i, frame

        try:
            for run in counts.runs:
                for position in run:
                    counts.fed += 1
                    yield from emerged(codec.decode(video.packets[position]))
            yield from emerged(codec.decode(None))
        except av.FFmpegError as ex:
            raise _unreadable(path, "cannot be decoded", ex) from ex
        if wanted:
            raise _unreadable(path, f"frames {sorted(wanted)[:5]} were not produced by the decoder")


# ----------------------------------------------------------------------------- level counts


class LevelCounter:
    """Per-channel counts of the 256 levels of RGB frames.

    Each uint8 pixel value would cost a cast and a counting step; counting the frame's bytes in
    pairs (as little-endian uint16) halves both. An RGB byte stream has period three pairs:
    (R0 G0) (B0 R1) (G1 B1), so pair k goes to histogram ``k mod 3`` of 65536 bins and the channel
    counts are that histogram's marginals. Pairs are counted into the histogram in place
    (``np.add.at``): ~15% faster per frame than ``np.bincount``, whose (3 x 65536)-bin result
    (1.5 MiB per decoding thread) was then added to it."""

    def __init__(self):
        self._pairs = np.zeros(CHANNELS * 65536, np.int64)
        self._single = np.zeros((CHANNELS, PIXEL_LEVELS), np.int64)
        self._index: np.ndarray | None = None  # a frame's pairs' histogram bins

    def add(self, rgb: np.ndarray, weight: int = 1) -> None:
        pixels = np.ascontiguousarray(rgb).reshape(-1, CHANNELS)
        if len(pixels) % 2:  # an odd pixel count leaves no whole pair for the last pixel
            self._single[np.arange(CHANNELS), pixels[-1]] += weight
            pixels = pixels[:-1]
        if not len(pixels):
            return
        pairs = pixels.reshape(-1).view("<u2")
        if self._index is None or len(self._index) != len(pairs):
            self._index = np.empty(len(pairs), np.intp)
        np.add(pairs, self._phases(len(pairs)), out=self._index)
        np.add.at(self._pairs, self._index, weight)

    @staticmethod
    @functools.lru_cache(maxsize=4)
    def _phases(n: int) -> np.ndarray:
        """Pair k -> (k mod 3) * 65536, for frames of n pairs; read-only, shared by the threads."""
        phase = (np.arange(n, dtype=np.intp) % CHANNELS) * 65536
        phase.flags.writeable = False
        return phase

    def take(self) -> np.ndarray:
        """(3, 256) int64: per channel (R, G, B), how many pixels had each level; the counter
        starts again from zero (its buffers are kept: allocating them per video costs more
        than counting a frame)."""
        h = self._pairs.reshape(CHANNELS, 256, 256)  # [pair phase, high byte, low byte]
        first, second = h.sum(axis=1), h.sum(axis=2)  # low byte (first in memory), high byte
        out = self._single.copy()
        out[0] += first[0] + second[1]  # R: low byte of phase 0, high byte of phase 1
        out[1] += second[0] + first[2]  # G
        out[2] += first[1] + second[2]  # B
        self._pairs.fill(0)
        self._single.fill(0)
        return out


@dataclass(frozen=True)
class LevelJob:
    """Count the levels of frames ``picks`` (presentation indices, each ``weights`` times) of an
    mp4 that must hold ``length`` frames; ``position`` and ``camera`` say whose it is."""

    path: str
    length: int
    picks: tuple[int, ...]
    weights: tuple[int, ...]
    position: int = 0
    camera: int = 0


@dataclass
class CameraSample:
    level_counts: np.ndarray  # (3, 256): per channel, how many sampled pixels have each level
    frames: int  # frames sampled (LeRobot's ``count``)
    decode: DecodeCounts


class FrameCounter:
    """Counts the levels of jobs' frames, one job after the other, with one RGB converter (a
    new one per frame costs 3x its conversion) and one :class:`LevelCounter`."""

    def __init__(self):
        from av.video.reformatter import VideoReformatter

        self.rgb = VideoReformatter()
        self.levels = LevelCounter()

    def count(self, job: LevelJob) -> CameraSample:
        """Level counts of the job's frames, each strided as LeRobot downsamples it for stats."""
        weight = dict(zip(job.picks, job.weights))
        decode = DecodeCounts()
        try:
            for i, frame in decoded_frames(Path(job.path), job.picks, job.length, decode):
                pixels = self.rgb.reformat(frame, format="rgb24").to_ndarray()
                step = lerobot_stride(*pixels.shape[:2])
                self.levels.add(pixels[::step, ::step] if step > 1 else pixels, weight[i])
        finally:
            counts = self.levels.take()  # also after a failure: the next job starts from zero
        return CameraSample(level_counts=counts, frames=int(sum(job.weights)), decode=decode)


def level_job(path: Path, length: int, position: int = 0, camera: int = 0) -> LevelJob:
    """The job for the frames LeRobot samples from an episode of ``length`` frames (a frame
    sampled twice counts twice)."""
    picks, multiplicity = np.unique(lerobot_sample_indices(length), return_counts=True)
    return LevelJob(str(path), int(length), tuple(picks.tolist()), tuple(multiplicity.tolist()), position, camera)


# ----------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class _Failure:
    """A job's RecordingError, carried across the pipe as its fields."""

    code: str
    path: str
    fault: str


_counters = threading.local()  # each decoding thread's FrameCounter


def _run_batch(jobs: Sequence[LevelJob]) -> list:
    """Outcomes of ``jobs`` in order: a CameraSample each, up to the first that fails (a
    _Failure). Any other exception propagates."""
    counter = getattr(_counters, "counter", None)
    if counter is None:
        counter = _counters.counter = FrameCounter()
    out: list = []
    for job in jobs:
        try:
            out.append(counter.count(job))
        except RecordingError as ex:
            out.append(_Failure(ex.code, str(ex.path), ex.fault))
            break
    return out


def serve(threads: int) -> None:
    """A helper process: ``threads`` threads run the batches ``(batch id, jobs)`` read from
    stdin and write ``(batch id, outcomes)`` to stdout, until stdin closes. An unexpected
    exception is sent back as its traceback text. Decoding, RGB conversion and most of numpy
    release the GIL, so two threads count about 1.8x as fast as one, for ~8 MiB more, where a
    second process would cost ~56 MiB."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a library printing to stdout must not corrupt the reply stream
    pending: queue.Queue = queue.Queue()
    replying = threading.Lock()

    def work() -> None:
        while (request := pending.get()) is not None:
            b, jobs = request
            try:
                reply = _run_batch(jobs)
            except Exception:  # noqa: BLE001 - reported to the parent, which raises
                reply = traceback.format_exc()
            with replying:
                pickle.dump((b, reply), replies, protocol=pickle.HIGHEST_PROTOCOL)
                replies.flush()

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    try:
        while True:
            pending.put(pickle.load(sys.stdin.buffer))
    except EOFError:
        pass
    for _ in workers:
        pending.put(None)
    for t in workers:
        t.join()


class HelperProcess:
    """One helper interpreter (see the module docstring) decoding on ``threads`` threads."""

    def __init__(self, threads: int):
        self.threads = threads
        package_root = str(Path(dorobot_assets.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        # -P: the working directory is not put first on sys.path, so this package comes from
        # where the parent's came from
        code = f"from dorobot_assets.lib.camera_stats import serve; serve({threads})"
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )

    def send(self, b: int, jobs: Sequence[LevelJob]) -> None:
        try:
            pickle.dump((b, list(jobs)), self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
        except OSError as ex:
            raise self._stopped(ex) from ex

    def receive(self) -> tuple[int, list]:
        try:
            b, reply = pickle.load(self.proc.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as ex:
            raise self._stopped(ex) from ex
        if isinstance(reply, str):
            raise RuntimeError(f"camera stats helper process {self.proc.pid} failed:\n{reply}")
        return b, reply

    def _stopped(self, ex: Exception) -> RuntimeError:
        return RuntimeError(f"camera stats helper process {self.proc.pid} stopped "
                            f"(exit code {self.proc.poll()}): {ex!r}")

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def batch_ranges(jobs: int, threads: int) -> list[range]:
    """Consecutive jobs (their indices) in batches: about BATCHES_PER_THREAD per decoding
    thread, at most MAX_JOBS_PER_BATCH each."""
    size = max(1, min(MAX_JOBS_PER_BATCH, -(-jobs // (threads * BATCHES_PER_THREAD))))
    return [range(i, min(i + size, jobs)) for i in range(0, jobs, size)]


class LevelCounting:
    """Runs jobs on ``threads`` decoding threads: in helper processes of THREADS_PER_HELPER
    threads each, every helper driven by a thread of this process that keeps one batch in
    flight per helper thread. With ``threads == 1`` this process runs the jobs itself, when
    their results are asked for (:meth:`outcomes`). Results come back in job order.

    With helpers this process never decodes, so it never loads PyAV (~17 MiB, and its decoders'
    buffers), which would stay with it for the steps that follow.

    ``jobs`` is read by index as batches are sent: a sequence that makes each job when asked
    keeps this process from holding them all (4000 jobs' frame lists were ~9 MiB).

    Use as a context manager: leaving it stops the helpers (on an error at once, killing them).
    """

    def __init__(self, jobs: Sequence[LevelJob], threads: int):
        self.jobs = jobs
        self.batches = batch_ranges(len(jobs), threads)
        self._sent: dict[int, list[LevelJob]] = {}  # batches taken and not yet emitted
        self._next = 0  # the next batch nobody has taken
        self._emitted = 0  # batches whose outcomes went to the caller
        self._done: dict[int, list] = {}
        self._failure: BaseException | None = None  # a helper that failed stops the counting
        self._cond = threading.Condition()
        self._stopping = False
        self._helpers: list[HelperProcess] = []
        threads = min(threads, len(self.batches)) if threads > 1 else 0
        split = [min(THREADS_PER_HELPER, threads - k) for k in range(0, threads, THREADS_PER_HELPER)]
        self._drivers = [
            threading.Thread(target=self._drive, args=(n,), name=f"camera-stats-helper-{k}", daemon=True)
            for k, n in enumerate(split)
        ]
        for t in self._drivers:
            t.start()

    @property
    def helper_processes(self) -> int:
        return len(self._drivers)

    def _take(self) -> int | None:
        with self._cond:
            if self._stopping or self._next >= len(self.batches):
                return None
            self._next += 1
            return self._next - 1

    def _jobs_of(self, b: int) -> list[LevelJob]:
        """Batch ``b``'s jobs, made once and kept until its outcomes are emitted."""
        with self._cond:
            if b not in self._sent:
                self._sent[b] = [self.jobs[i] for i in self.batches[b]]
            return self._sent[b]

    def _drive(self, threads: int) -> None:
        """Keep ``threads`` batches in flight in one helper until none is left."""
        in_flight = 0
        try:
            helper = HelperProcess(threads)
            with self._cond:
                self._helpers.append(helper)
            while True:
                while in_flight < threads and (b := self._take()) is not None:
                    helper.send(b, self._jobs_of(b))
                    in_flight += 1
                if not in_flight:
                    return
                b, reply = helper.receive()
                in_flight -= 1
                with self._cond:
                    self._done[b] = reply
                    self._cond.notify_all()
        except BaseException as ex:  # noqa: BLE001 - handed to the thread reading results
            with self._cond:
                self._failure = self._failure or ex
                self._cond.notify_all()

    def _reply(self, b: int, wait: bool) -> list | None:
        """Batch ``b``'s outcomes (None if not in and not ``wait``); without helpers, run here."""
        if not self._drivers:
            return _run_batch(self._jobs_of(b)) if wait else None
        with self._cond:
            if b not in self._done and wait:
                self._cond.wait_for(lambda: b in self._done or self._failure is not None)
            if b in self._done:
                return self._done.pop(b)
            if self._failure is not None:
                raise self._failure
            return None

    def outcomes(self, wait: bool = True) -> Iterator[tuple[LevelJob, CameraSample]]:
        """``(job, sample)`` in job order, continuing where the previous call stopped; with
        ``wait=False`` only those ready now. Raises the RecordingError of the first failed job."""
        while self._emitted < len(self.batches):
            reply = self._reply(self._emitted, wait)
            if reply is None:
                return
            batch = self._jobs_of(self._emitted)
            with self._cond:
                del self._sent[self._emitted]
            self._emitted += 1
            for job, outcome in zip(batch, reply):
                if isinstance(outcome, _Failure):
                    raise RecordingError(outcome.code, Path(outcome.path), outcome.fault)
                yield job, outcome

    def __enter__(self) -> "LevelCounting":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        with self._cond:
            self._stopping = True
            helpers = list(self._helpers)
        if exc_type is not None:
            for helper in helpers:
                helper.proc.kill()  # its driver then gets EOF and ends
        for t in self._drivers:
            t.join()
        for helper in self._helpers:
            helper.close()
