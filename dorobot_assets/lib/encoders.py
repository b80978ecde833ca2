"""Video encoders for the ``reencode`` setting: PyAV software, the ffmpeg command line, Ascend NPU.

The default conversion path is stream copy (lib/video.py) and never touches an encoder. With
``reencode`` every episode MP4 is transcoded through one of these backends first:

- ``pyav``: in-process software encoding with PyAV's bundled FFmpeg, ``libsvtav1`` (LeRobot's
  recorder settings: ``g=2``, ``crf=30``, ``yuv420p``) or ``libx264``.
- ``ffmpeg``: the same codecs through an ``ffmpeg`` executable (configured path or on PATH).
- ``npu``: a Huawei Ascend NPU through Ascend's FFmpeg build, encoder ``h264_ascend`` with
  ``-device_id``/``-channel_id``. The chip has a few encoding channels; at most ``channels``
  transcodes run at once (each holds one channel id), a run that still finds every channel taken
  (another process uses the chip) is retried with exponential backoff, and optionally falls back
  to ``libx264``.

Every transcode keeps the source frames' timestamps and time base, so the episode's frames stay at
the same pts. Subprocesses run in their own process group and are killed in ``finally`` when the
caller is interrupted (Dagster run termination raises in the step's main thread), or from another
thread through :meth:`VideoEncoder.kill_running`.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

# SVT-AV1 prints a banner per encoder on stderr unless told otherwise (1 = errors only); it reads
# the variable when an encoder opens, so setting it here, before any encoding, is enough.
os.environ.setdefault("SVT_LOG", "1")

from dorobot_assets.lib.errors import ConfigError, DorobotError  # noqa: E402

BACKENDS = ("pyav", "ffmpeg", "npu")
SOFTWARE_CODECS = ("libsvtav1", "libx264")
DEFAULT_BACKEND = "pyav"
DEFAULT_CODEC = "libsvtav1"
DEFAULT_CRF = 30  # LeRobot's recorder
DEFAULT_GOP = 2  # LeRobot's recorder: a key frame every 2 frames keeps random access cheap
DEFAULT_PIX_FMT = "yuv420p"
DEFAULT_NPU_DEVICE = 0
DEFAULT_NPU_CHANNELS = 2
DEFAULT_NPU_RETRIES = 5
DEFAULT_NPU_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
NPU_ENCODER = "h264_ascend"
FALLBACK_CODEC = "libx264"
# What lands in the MP4 for each encoder name (info.json's video.codec vocabulary).
CODEC_OF_ENCODER = {"libsvtav1": "av1", "libx264": "h264", NPU_ENCODER: "h264"}
# Ascend's FFmpeg reports a chip whose encoding channels are all taken in one of these ways.
CHANNEL_BUSY = re.compile(
    r"(channel.{0,60}(busy|occupied|exhausted|unavailable|in use)|no (free|idle|available) channel"
    r"|create_?chn failed)",
    re.IGNORECASE,
)
POLL_S = 0.2  # how often a waiting thread looks at the cancel flag
STDERR_TAIL = 800  # characters of an encoder's stderr quoted in an error


class EncoderError(DorobotError):
    """A transcode failed; the message names the source file and quotes the encoder."""


class EncoderUnavailable(EncoderError):
    """The configured encoder cannot run here (no ffmpeg, or ffmpeg without the encoder)."""


class ChannelsExhausted(EncoderError):
    """Every NPU encoding channel stayed busy through all retries."""


class EncodeCancelled(DorobotError):
    """The conversion was interrupted while this transcode waited or ran."""


@dataclass(frozen=True)
class EncoderConfig:
    """Everything that selects and tunes an encoder; shared by the CLI and the Dagster resource."""

    backend: str = DEFAULT_BACKEND
    codec: str = DEFAULT_CODEC  # pyav / ffmpeg backends
    crf: int = DEFAULT_CRF
    gop: int = DEFAULT_GOP
    preset: str | None = None  # encoder's own default when None
    ffmpeg: str | None = None  # executable path or name; None = `ffmpeg` on PATH
    npu_device_id: int = DEFAULT_NPU_DEVICE
    npu_channels: int = DEFAULT_NPU_CHANNELS
    npu_retries: int = DEFAULT_NPU_RETRIES
    npu_backoff_s: float = DEFAULT_NPU_BACKOFF_S
    npu_fallback_to_libx264: bool = False

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ConfigError(f"video encoder backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.codec not in SOFTWARE_CODECS:
            raise ConfigError(f"video codec must be one of {SOFTWARE_CODECS}, got {self.codec!r}")
        if not 0 <= self.crf <= 63:
            raise ConfigError(f"crf must be in 0..63, got {self.crf}")
        if self.gop < 1:
            raise ConfigError(f"gop must be >= 1, got {self.gop}")
        if self.npu_device_id < 0:
            raise ConfigError(f"npu_device_id must be >= 0, got {self.npu_device_id}")
        if self.npu_channels < 1:
            raise ConfigError(f"npu_channels must be >= 1, got {self.npu_channels}")
        if self.npu_retries < 0 or self.npu_backoff_s < 0:
            raise ConfigError("npu_retries and npu_backoff_s must be >= 0")


def build_encoder(config: EncoderConfig = EncoderConfig()) -> "VideoEncoder":
    if config.backend == "pyav":
        return PyAVEncoder(config.codec, crf=config.crf, gop=config.gop, preset=config.preset)
    if config.backend == "ffmpeg":
        return FfmpegEncoder(config.codec, crf=config.crf, gop=config.gop, preset=config.preset, ffmpeg=config.ffmpeg)
    fallback = (
        PyAVEncoder(FALLBACK_CODEC, crf=config.crf, gop=config.gop, preset=config.preset)
        if config.npu_fallback_to_libx264 else None
    )
    return AscendEncoder(
        device_id=config.npu_device_id, channels=config.npu_channels, gop=config.gop,
        retries=config.npu_retries, backoff_s=config.npu_backoff_s, fallback=fallback, ffmpeg=config.ffmpeg,
    )


class VideoEncoder(ABC):
    """Transcodes one episode MP4 into another MP4 (first video stream only, timestamps kept)."""

    encoder_name: str  # e.g. libsvtav1, h264_ascend

    def __init__(self):
        self._notes: list[str] = []
        self._notes_lock = threading.Lock()

    @property
    def codec(self) -> str:
        """The codec written into the MP4, in info.json's vocabulary (av1, h264)."""
        return CODEC_OF_ENCODER.get(self.encoder_name, self.encoder_name)

    @property
    def notes(self) -> list[str]:
        with self._notes_lock:
            return list(self._notes)

    def _note(self, text: str) -> None:
        with self._notes_lock:
            if text not in self._notes:
                self._notes.append(text)

    def describe(self) -> str:
        return self.encoder_name

    def prepare(self) -> None:
        """Check that this encoder can run, before anything is written; raise EncoderUnavailable."""

    @abstractmethod
    def transcode(self, src: Path, dst: Path, *, fps: float, cancel: threading.Event | None = None) -> None:
        """Write ``dst`` (an MP4) from ``src``; frames keep their pts and the source's time base."""

    def kill_running(self) -> int:
        """Kill every encoder subprocess still running; returns how many were killed."""
        return 0


def _cancelled(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()


# ----------------------------------------------------------------------------- PyAV (in-process)


class PyAVEncoder(VideoEncoder):
    def __init__(self, codec: str = DEFAULT_CODEC, *, crf: int = DEFAULT_CRF, gop: int = DEFAULT_GOP,
                 preset: str | None = None, pix_fmt: str = DEFAULT_PIX_FMT):
        super().__init__()
        if codec not in SOFTWARE_CODECS:
            raise ConfigError(f"PyAV encoder codec must be one of {SOFTWARE_CODECS}, got {codec!r}")
        self.encoder_name = codec
        self.crf, self.gop, self.preset, self.pix_fmt = crf, gop, preset, pix_fmt

    def options(self) -> dict[str, str]:
        opts = {"g": str(self.gop), "crf": str(self.crf)}
        if self.preset is not None:
            opts["preset"] = str(self.preset)
        return opts

    def describe(self) -> str:
        preset = f" preset={self.preset}" if self.preset is not None else ""
        return f"PyAV {self.encoder_name} g={self.gop} crf={self.crf}{preset} {self.pix_fmt}"

    def prepare(self) -> None:
        import av  # imported when re-encoding, not by every command that loads this module

        if self.encoder_name not in av.codecs_available:
            raise EncoderUnavailable(f"PyAV's FFmpeg has no {self.encoder_name} encoder")

    def transcode(self, src: Path, dst: Path, *, fps: float, cancel: threading.Event | None = None) -> None:
        import av

        try:
            with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
                ist = inp.streams.video[0]
                ist.thread_type = "AUTO"
                rate = ist.average_rate or Fraction(fps).limit_denominator(1001)
                ost = out.add_stream(self.encoder_name, rate=rate, options=self.options())
                ost.width, ost.height, ost.pix_fmt = ist.width, ist.height, self.pix_fmt
                # Keep the source's clock: frame k stays at the pts it had (e.g. k * 512 / 15360 s).
                ost.time_base = ist.time_base
                ost.codec_context.time_base = ist.time_base
                for k, frame in enumerate(inp.decode(ist)):
                    if _cancelled(cancel):
                        raise EncodeCancelled(f"{src}: transcode cancelled")
                    pts = frame.pts
                    if frame.format.name != self.pix_fmt:
                        frame = frame.reformat(format=self.pix_fmt)
                    frame.pts = pts if pts is not None else k
                    frame.time_base = ist.time_base
                    # A decoded I frame keeps its picture type, which encoders obey as "force a key
                    # frame": all-intra sources would stay all-intra. Let the encoder's gop decide.
                    frame.pict_type = av.video.frame.PictureType.NONE
                    for packet in ost.encode(frame):
                        out.mux(packet)
                for packet in ost.encode():
                    out.mux(packet)
        except av.error.FFmpegError as e:
            raise EncoderError(f"{src}: {self.describe()} failed: {e}") from e


# ----------------------------------------------------------------------------- ffmpeg subprocesses


class _Processes:
    """Encoder subprocesses of one encoder: run to completion, or killed when interrupted."""

    def __init__(self):
        self._live: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def run(self, args: list[str], cancel: threading.Event | None) -> tuple[int, str]:
        # Own process group: a kill reaches ffmpeg's children too, and a terminal's Ctrl-C is ours
        # to handle (we kill it below) rather than ffmpeg's.
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        with self._lock:
            self._live.add(proc)
        try:
            while True:
                try:
                    _, err = proc.communicate(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    if _cancelled(cancel):
                        raise EncodeCancelled(f"{args[0]}: cancelled") from None
            if _cancelled(cancel):
                raise EncodeCancelled(f"{args[0]}: cancelled")
            return proc.returncode, (err or b"").decode("utf-8", errors="replace")
        finally:
            with self._lock:
                self._live.discard(proc)
            if proc.poll() is None:
                _kill(proc)
            if proc.stderr is not None:
                proc.stderr.close()

    def kill_all(self) -> int:
        with self._lock:
            live = list(self._live)
        for proc in live:
            _kill(proc)
        return len(live)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= STDERR_TAIL else "..." + text[-STDERR_TAIL:]


def list_ffmpeg_encoders(ffmpeg: str) -> set[str]:
    """Encoder names that ``ffmpeg -encoders`` lists."""
    try:
        out = subprocess.run(
            [ffmpeg, "-hide_banner", "-encoders"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EncoderUnavailable(f"{ffmpeg}: cannot run `{ffmpeg} -encoders`: {e}") from e
    names = set()
    listing = out.stdout.decode("utf-8", errors="replace").splitlines()
    for line in listing:
        parts = line.split()
        # Rows look like " V....D libx264   libx264 H.264 ..." (capability flags, name, description).
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] in "VAS" and parts[1] != "=":
            names.add(parts[1])
    return names


class FfmpegEncoder(VideoEncoder):
    """Software encoding through an ``ffmpeg`` executable (configured path, else found on PATH)."""

    def __init__(self, codec: str = DEFAULT_CODEC, *, crf: int = DEFAULT_CRF, gop: int = DEFAULT_GOP,
                 preset: str | None = None, pix_fmt: str = DEFAULT_PIX_FMT, ffmpeg: str | None = None):
        super().__init__()
        self.encoder_name = codec
        self.crf, self.gop, self.preset, self.pix_fmt = crf, gop, preset, pix_fmt
        self.ffmpeg = ffmpeg
        self._exe: str | None = None
        self._processes = _Processes()

    def describe(self) -> str:
        return f"ffmpeg ({self._exe or self.ffmpeg or 'PATH'}) {self.encoder_name} g={self.gop} crf={self.crf}"

    def executable(self) -> str:
        if self._exe is None:
            name = self.ffmpeg or "ffmpeg"
            found = shutil.which(name)
            if found is None:
                where = "on PATH" if os.sep not in name else "at that path"
                raise EncoderUnavailable(f"no ffmpeg executable {name!r} {where}")
            self._exe = found
        return self._exe

    def prepare(self) -> None:
        exe = self.executable()
        if self.encoder_name not in list_ffmpeg_encoders(exe):
            raise EncoderUnavailable(f"{exe}: this ffmpeg has no {self.encoder_name} encoder (see `{exe} -encoders`)")

    def _input_args(self, src: Path) -> list[str]:
        # -vsync passthrough keeps every frame with its own timestamp (spelled the same in FFmpeg 4.x
        # and 7.x); only the first video stream is written.
        return [self.executable(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                "-i", str(src), "-map", "0:v:0", "-an", "-vsync", "passthrough"]

    def command(self, src: Path, dst: Path, fps: float) -> list[str]:
        args = [*self._input_args(src), "-c:v", self.encoder_name, "-g", str(self.gop), "-crf", str(self.crf)]
        if self.preset is not None:
            args += ["-preset", str(self.preset)]
        return [*args, "-pix_fmt", self.pix_fmt, "-f", "mp4", str(dst)]

    def transcode(self, src: Path, dst: Path, *, fps: float, cancel: threading.Event | None = None) -> None:
        code, err = self._processes.run(self.command(src, dst, fps), cancel)
        if code != 0:
            raise EncoderError(f"{src}: {self.describe()} failed (exit {code}): {_tail(err)}")

    def kill_running(self) -> int:
        return self._processes.kill_all()


class AscendEncoder(FfmpegEncoder):
    """H.264 on a Huawei Ascend NPU through Ascend's FFmpeg build (encoder ``h264_ascend``).

    Channel ids ``0..channels-1`` are handed out one per running transcode (a bounded pool, i.e. a
    semaphore of ``channels``). When the chip still reports every channel busy, the transcode is
    retried after ``backoff_s * 2**attempt`` seconds, ``retries`` times, then falls back to
    ``fallback`` (libx264) if one is configured, else raises :class:`ChannelsExhausted`.
    """

    def __init__(self, *, device_id: int = DEFAULT_NPU_DEVICE, channels: int = DEFAULT_NPU_CHANNELS,
                 gop: int = DEFAULT_GOP, retries: int = DEFAULT_NPU_RETRIES,
                 backoff_s: float = DEFAULT_NPU_BACKOFF_S, fallback: VideoEncoder | None = None,
                 ffmpeg: str | None = None):
        super().__init__(NPU_ENCODER, gop=gop, ffmpeg=ffmpeg)
        self.device_id, self.channels, self.retries, self.backoff_s = device_id, channels, retries, backoff_s
        self.fallback = fallback
        self._free_channels: queue.Queue[int] = queue.Queue()
        for channel in range(channels):
            self._free_channels.put(channel)
        self._use_fallback = False

    def describe(self) -> str:
        exe = self._exe or self.ffmpeg or "PATH"
        text = f"Ascend NPU ffmpeg ({exe}) {NPU_ENCODER} device {self.device_id}, {self.channels} channels, gop={self.gop}"
        if self.fallback is not None:
            text += f", fallback {self.fallback.describe()}"
        return text

    def prepare(self) -> None:
        try:
            exe = self.executable()
            if NPU_ENCODER not in list_ffmpeg_encoders(exe):
                raise EncoderUnavailable(
                    f"{exe}: this ffmpeg has no {NPU_ENCODER} encoder (not listed by `{exe} -encoders`); "
                    f"install Ascend's FFmpeg build (configured with --enable-ascend) and put it on PATH or set "
                    f"its path, or enable the libx264 fallback"
                )
        except EncoderUnavailable as e:
            if self.fallback is None:
                raise
            self.fallback.prepare()
            self._use_fallback = True
            self._note(f"{e}; encoding with {self.fallback.describe()} instead")

    def command(self, src: Path, dst: Path, fps: float, channel: int = 0) -> list[str]:
        frame_rate = min(240, max(1, int(round(fps))))  # h264_ascend accepts whole rates 1..240
        return [
            *self._input_args(src), "-c:v", NPU_ENCODER,
            "-device_id", str(self.device_id), "-channel_id", str(channel),
            "-gop", str(self.gop), "-frame_rate", str(frame_rate), "-f", "mp4", str(dst),
        ]

    def _acquire(self, cancel: threading.Event | None) -> int:
        while True:
            try:
                return self._free_channels.get(timeout=POLL_S)
            except queue.Empty:
                if _cancelled(cancel):
                    raise EncodeCancelled("waiting for an NPU channel: cancelled") from None

    def transcode(self, src: Path, dst: Path, *, fps: float, cancel: threading.Event | None = None) -> None:
        if self._use_fallback:
            assert self.fallback is not None
            return self.fallback.transcode(src, dst, fps=fps, cancel=cancel)
        attempt = 0
        while True:
            channel = self._acquire(cancel)
            try:
                code, err = self._processes.run(self.command(src, dst, fps, channel), cancel)
            finally:
                self._free_channels.put(channel)
            if code == 0:
                return
            if not CHANNEL_BUSY.search(err):
                raise EncoderError(f"{src}: {NPU_ENCODER} failed (exit {code}): {_tail(err)}")
            attempt += 1
            if attempt > self.retries:
                message = (f"{src}: every {NPU_ENCODER} channel of NPU device {self.device_id} stayed busy "
                           f"through {self.retries} retries: {_tail(err)}")
                if self.fallback is None:
                    raise ChannelsExhausted(message)
                self._note(f"NPU channels exhausted, some episodes were encoded with {self.fallback.describe()}")
                return self.fallback.transcode(src, dst, fps=fps, cancel=cancel)
            delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))
            if cancel is not None:
                if cancel.wait(delay):
                    raise EncodeCancelled(f"{src}: cancelled while waiting for an NPU channel")
            else:
                time.sleep(delay)

    def kill_running(self) -> int:
        killed = super().kill_running()
        if self.fallback is not None:
            killed += self.fallback.kill_running()
        return killed
