"""audio/{audio_key}/chunk-XXX/file-YYY.wav: DoRobot microphones concatenated (issue: audio).

DoRobot keeps one WAV per episode and microphone; v3.0 has no audio, so we pack it the v3.0 way:
per microphone, episodes concatenated in order into few WAV files, placed with the shared
:mod:`rollover` rule, and a new file whenever the sample rate, channel count or sample format
changes (one WAV header cannot describe two). An episode's position is an integer sample range;
``from_timestamp``/``to_timestamp`` are those sample offsets divided by the file's rate, so
``round(from * rate)`` and ``round(to * rate)`` give the range back exactly.

Every source WAV header is read before anything is written. PCM and IEEE-float samples are
stored little-endian and interleaved in every RIFF/WAVE file, so an output file is one header
(its final size known from the plan) followed by each member's ``data`` chunk copied byte for byte
(``os.copy_file_range``: the kernel copies, nothing is decoded). A member whose layout our own
header parser does not fully understand (big-endian RIFX, a WAVE_FORMAT_EXTENSIBLE file with
padded samples, a data chunk longer than the file...) is read by libsndfile instead, and its
whole output file is written through it in blocks, and a note says so. Memory does not grow with
the recording either way. An episode without its WAV is not an error: its columns are null and
:mod:`audio_checks` reports it.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dorobot_assets.lib.data import remove_unplanned
from dorobot_assets.lib.errors import DorobotError, OutputError, RecordingError
from dorobot_assets.lib.fsutil import atomic_path
from dorobot_assets.lib.rollover import FileSlot, group_by_slot, plan_rollover
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.arrow import column_numpy, float64_array, int64_array
from dorobot_assets.lib.v21 import Recording
from dorobot_assets.lib.v30 import AUDIO_PATH, INFO_PATH, MB, audio_file, resolve_inside

BLOCK_FRAMES = 1 << 16  # frames per read when libsndfile decodes: 128 KiB for 16-bit mono
COPY_BUFFER_BYTES = 1 << 20  # when the kernel cannot copy between the two files itself
# Sample formats we copy losslessly, with the numpy type libsndfile reads them into unchanged.
SAMPLE_DTYPES = {
    "PCM_U8": "int16",
    "PCM_16": "int16",
    "PCM_24": "int32",
    "PCM_32": "int32",
    "FLOAT": "float32",
    "DOUBLE": "float64",
}
SAMPLE_BYTES = {"PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}
# A RIFF/WAV file addresses at most 4 GiB; keep room for the header.
WAV_MAX_DATA_BYTES = 0xFFFFFFFF - 1024
PLACEMENT_FIELDS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")

# RIFF/WAVE layout (Microsoft "Multimedia Programming Interface and Data Specifications 1.0";
# WAVE_FORMAT_EXTENSIBLE from "Multiple channel audio data and WAVE files").
WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# The sub-format GUID of an extensible file is {0000xxxx-0000-0010-8000-00AA00389B71}, xxxx being
# the plain format tag; these are its bytes after the tag, as stored.
_EXTENSIBLE_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")
_SUBTYPES = {
    (WAVE_FORMAT_PCM, 8): "PCM_U8", (WAVE_FORMAT_PCM, 16): "PCM_16", (WAVE_FORMAT_PCM, 24): "PCM_24",
    (WAVE_FORMAT_PCM, 32): "PCM_32", (WAVE_FORMAT_IEEE_FLOAT, 32): "FLOAT", (WAVE_FORMAT_IEEE_FLOAT, 64): "DOUBLE",
}
_RIFF = struct.Struct("<4sI4s")
_CHUNK = struct.Struct("<4sI")
_FMT = struct.Struct("<HHIIHH")  # format tag, channels, sample rate, byte rate, block align, bits
_EXTENSIBLE = struct.Struct("<HHI16s")  # extension size, valid bits, channel mask, sub-format GUID


def placement_column(audio_key: str, field_name: str) -> str:
    return f"audio/{audio_key}/{field_name}"


@dataclass
class AudioResult:
    placements: pa.Table  # episode_index + audio/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}
    files: list[Path] = field(default_factory=list)
    bytes_written: int = 0
    features_info: dict[str, dict] = field(default_factory=dict)  # info.json features[<key>]["info"]
    missing: list[tuple[str, int]] = field(default_factory=list)  # (audio_key, episode) without a WAV
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WavHeader:
    path: Path
    sample_rate: int
    channels: int
    subtype: str
    frames: int
    # where the samples start in the file, when they can be copied byte for byte; None when
    # only libsndfile reads this file (``byte_copy_refusal`` says why)
    data_offset: int | None = None
    byte_copy_refusal: str = ""

    @property
    def layout(self) -> tuple[int, int, str]:
        """What must be equal for two episodes to share one output file."""
        return (self.sample_rate, self.channels, self.subtype)

    @property
    def data_bytes(self) -> int:
        return self.frames * self.channels * SAMPLE_BYTES[self.subtype]


def _scan_riff_wave(path: Path) -> tuple[WavHeader | None, str]:
    """Our own reading of a RIFF/WAVE header: ``(header, "")`` when the samples can be copied
    byte for byte, else ``(None, why not)``, and libsndfile has the last word on the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return None, f"cannot be opened: {e}"
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, _RIFF.size, 0)
        if len(head) < _RIFF.size:
            return None, "shorter than a RIFF header"
        riff, _, wave = _RIFF.unpack(head)
        if riff != b"RIFF" or wave != b"WAVE":
            return None, f"{riff.decode('latin-1')!r}/{wave.decode('latin-1')!r} container, not little-endian RIFF/WAVE"
        fmt = None
        pos = _RIFF.size
        while pos + _CHUNK.size <= size:
            chunk_id, chunk_size = _CHUNK.unpack(os.pread(fd, _CHUNK.size, pos))
            body = pos + _CHUNK.size
            if chunk_id == b"fmt ":
                if fmt is not None or chunk_size < _FMT.size or body + chunk_size > size:
                    return None, "repeated or short fmt chunk"
                fmt = os.pread(fd, min(chunk_size, _FMT.size + _EXTENSIBLE.size), body)
            elif chunk_id == b"data":
                if fmt is None:
                    return None, "data chunk before the fmt chunk"
                return _header_from_fmt(path, fmt, body, chunk_size, size - body)
            pos = body + chunk_size + (chunk_size & 1)  # chunks are padded to an even size
        return None, "no data chunk"
    except OSError as e:
        return None, f"cannot be read: {e}"
    finally:
        os.close(fd)


def _header_from_fmt(path: Path, fmt: bytes, data_offset: int, declared: int, available: int) -> tuple[WavHeader | None, str]:
    tag, channels, sample_rate, _byte_rate, block_align, bits = _FMT.unpack_from(fmt)
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < _FMT.size + _EXTENSIBLE.size:
            return None, "WAVE_FORMAT_EXTENSIBLE header without its extension"
        _, valid_bits, _mask, guid = _EXTENSIBLE.unpack_from(fmt, _FMT.size)
        if guid[2:] != _EXTENSIBLE_GUID_TAIL:
            return None, f"WAVE_FORMAT_EXTENSIBLE sub-format {guid.hex()}"
        if valid_bits not in (0, bits):
            return None, f"WAVE_FORMAT_EXTENSIBLE with {valid_bits} valid bits in {bits}-bit samples"
        tag = int.from_bytes(guid[:2], "little")
    subtype = _SUBTYPES.get((tag, bits))
    if subtype is None:
        return None, f"format tag {tag:#06x} with {bits}-bit samples"
    if channels < 1 or sample_rate < 1 or block_align != channels * SAMPLE_BYTES[subtype]:
        return None, f"{channels} channels at {sample_rate} Hz in blocks of {block_align} bytes"
    if declared > available or declared % block_align or (declared == 0 and available > 0):
        return None, f"data chunk of {declared} bytes ({available} in the file, blocks of {block_align})"
    header = WavHeader(path, sample_rate, channels, subtype, declared // block_align, data_offset=data_offset)
    return header, ""


def _sndfile_header(path: Path, refusal: str) -> WavHeader:
    """The header as libsndfile reads it, or a RecordingError naming the file.

    Errors are not chained (``from None``): the fault text carries libsndfile's message, and
    error reporters that show the innermost cause must show ours.
    """
    import soundfile as sf  # only for files our parser leaves to libsndfile (45 ms to import)

    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, OSError) as e:
        raise RecordingError("audio_unreadable", path, f"not a readable WAV file: {e}") from None
    if info.subtype not in SAMPLE_DTYPES:
        raise RecordingError(
            "audio_unsupported", path,
            f"sample format {info.subtype} ({info.subtype_info}) is not one of {sorted(SAMPLE_DTYPES)}",
        )
    if info.samplerate <= 0 or info.channels <= 0 or info.frames < 0:
        raise RecordingError(
            "audio_unreadable", path,
            f"header declares {info.samplerate} Hz, {info.channels} channels, {info.frames} frames",
        )
    return WavHeader(
        path, int(info.samplerate), int(info.channels), info.subtype, int(info.frames), byte_copy_refusal=refusal
    )


def read_wav_header(path: Path) -> WavHeader:
    """The header of a source WAV, or a RecordingError naming the file (audio_unreadable,
    audio_unsupported). A plain PCM/float RIFF file is read by our parser (~20 us); anything
    else is judged by libsndfile, exactly as before there was a parser."""
    path = path if isinstance(path, Path) else Path(path)
    header, refusal = _scan_riff_wave(path)
    return header if header is not None else _sndfile_header(path, refusal)


def sample_span_seconds(start: int, count: int, sample_rate: int, where: str = "") -> tuple[float, float]:
    """``(from, to)`` in seconds for samples ``[start, start + count)`` of a file at ``sample_rate``.

    Computed from integer sample offsets (never by summing float durations, which drifts), then
    verified: ``round(from * rate) == start`` and ``round(to * rate) == start + count``.
    """
    begin = start / sample_rate
    end = (start + count) / sample_rate
    if round(begin * sample_rate) != start or round(end * sample_rate) != start + count:
        raise OutputError(f"{where}: samples {start}..{start + count} at {sample_rate} Hz are not exact as seconds")
    return begin, end


def _features_info(key: str, headers: list[WavHeader], notes: list[str]) -> dict | None:
    if not headers:
        notes.append(f"microphone {key!r} has no WAV in any episode: no audio file and no header info")
        return None
    first = headers[0]
    layouts = sorted({h.layout for h in headers})
    if len(layouts) > 1:
        shown = ", ".join(f"{sr} Hz/{ch} ch/{st}" for sr, ch, st in layouts)
        notes.append(
            f"microphone {key!r} changes format between episodes ({shown}): a new file starts at "
            f"each change; info.json shows the first episode's format, each file's header its own"
        )
    return {
        "audio.sample_rate": first.sample_rate,
        "audio.channels": first.channels,
        "audio.subtype": first.subtype,
    }


def write_audio(
    rec: Recording,
    dataset_root: Path,
    settings: ConversionSettings,
    *,
    block_frames: int = BLOCK_FRAMES,
) -> AudioResult:
    dataset_root = Path(dataset_root)
    n = len(rec.episodes)
    columns: dict[str, pa.Array] = {"episode_index": int64_array([e.index for e in rec.episodes])}
    if not rec.audio_keys:
        # No audio files and no audio columns; only leftovers of an earlier conversion go.
        removed = remove_unplanned(dataset_root / "audio", [], "*.wav")
        notes = [f"removed {len(removed)} audio files of an earlier conversion"] if removed else []
        return AudioResult(placements=pa.table(columns), notes=notes)

    # Read every header first: an unreadable WAV stops the asset before anything is written.
    headers: dict[str, list[WavHeader | None]] = {}
    missing: list[tuple[str, int]] = []
    for key in rec.audio_keys:
        per_episode: list[WavHeader | None] = []
        for ep in rec.episodes:
            path = ep.audio_paths[key]
            if path.is_file():
                per_episode.append(read_wav_header(path))
            else:
                per_episode.append(None)
                missing.append((key, ep.index))
        headers[key] = per_episode

    # Plan every microphone before writing any: a plan that cannot be written stops here too.
    result = AudioResult(placements=pa.table(columns), missing=missing)
    plans: list[tuple[str, list[int], list[WavHeader], list[FileSlot]]] = []
    for key in rec.audio_keys:
        present = [i for i, h in enumerate(headers[key]) if h is not None]
        present_headers = [headers[key][i] for i in present]
        info = _features_info(key, present_headers, result.notes)
        if info is not None:
            result.features_info[key] = info
        slots = plan_rollover(
            [h.data_bytes / MB for h in present_headers],
            settings.audio_file_size_mb,
            files_per_chunk=settings.files_per_chunk,
            new_file_before=[j > 0 and h.layout != present_headers[j - 1].layout for j, h in enumerate(present_headers)],
        )
        for slot, members in group_by_slot(slots):
            total = sum(present_headers[j].data_bytes for j in members)
            if total > WAV_MAX_DATA_BYTES:
                raise OutputError(
                    f"{present_headers[members[0]].path}: {key} episodes "
                    f"{[rec.episodes[present[j]].index for j in members]} hold {total} bytes of samples, "
                    f"more than one WAV file can address (4 GiB)"
                )
        absent = [e for k, e in missing if k == key]
        if absent:
            result.notes.append(
                f"microphone {key!r}: no WAV for episodes {absent[:20]}{'...' if len(absent) > 20 else ''}; "
                f"their audio columns are null"
            )
        decoded = [h for h in present_headers if h.data_offset is None]
        if decoded:
            result.notes.append(
                f"microphone {key!r}: {len(decoded)} WAV file(s) decoded by libsndfile instead of copied byte "
                f"for byte, with the output files holding them (first: {decoded[0].path}: "
                f"{decoded[0].byte_copy_refusal})"
            )
        plans.append((key, present, present_headers, slots))

    for key, present, present_headers, slots in plans:
        placed: list[tuple | None] = [None] * n
        for slot, members in group_by_slot(slots):
            final = dataset_root / audio_file(key, slot.chunk_index, slot.file_index)
            member_headers = [present_headers[j] for j in members]
            if all(h.data_offset is not None for h in member_headers):
                placed_here = _write_file_by_copy(final, member_headers, slot)
            else:
                placed_here = _write_file_by_decoding(final, member_headers, slot, block_frames)
            for j, placement in zip(members, placed_here):
                placed[present[j]] = placement
            result.files.append(final)
        chunk, file_, begin, end = zip(*[p if p is not None else (None,) * 4 for p in placed])
        columns[placement_column(key, "chunk_index")] = int64_array(chunk)
        columns[placement_column(key, "file_index")] = int64_array(file_)
        columns[placement_column(key, "from_timestamp")] = float64_array(begin)
        columns[placement_column(key, "to_timestamp")] = float64_array(end)

    removed = remove_unplanned(dataset_root / "audio", result.files, "*.wav")
    if removed:
        result.notes.append(f"removed {len(removed)} audio files of an earlier conversion")
    result.placements = pa.table(columns)
    result.bytes_written = sum(f.stat().st_size for f in result.files)
    return result


def _placements(members: list[WavHeader], slot: FileSlot, final: Path) -> list[tuple]:
    """(chunk, file, from, to) per member, from the integer sample offsets inside the file."""
    placements = []
    offset = 0
    for header in members:
        begin, end = sample_span_seconds(offset, header.frames, header.sample_rate, str(final))
        placements.append((slot.chunk_index, slot.file_index, begin, end))
        offset += header.frames
    return placements


def wav_header_bytes(sample_rate: int, channels: int, subtype: str, frames: int) -> bytes:
    """A canonical RIFF/WAVE header for ``frames`` frames, ending where the samples begin: a
    16-byte fmt chunk (WAVE_FORMAT_PCM, or IEEE_FLOAT with the fact chunk the format requires),
    as libsndfile writes them, then the data chunk header."""
    sample_bytes = SAMPLE_BYTES[subtype]
    block_align = channels * sample_bytes
    data_bytes = frames * block_align
    is_float = subtype in ("FLOAT", "DOUBLE")
    fmt = _FMT.pack(
        WAVE_FORMAT_IEEE_FLOAT if is_float else WAVE_FORMAT_PCM, channels, sample_rate,
        sample_rate * block_align, block_align, 8 * sample_bytes,
    )
    chunks = _CHUNK.pack(b"fmt ", len(fmt)) + fmt
    if is_float:
        chunks += _CHUNK.pack(b"fact", 4) + struct.pack("<I", frames)
    riff_size = 4 + len(chunks) + _CHUNK.size + data_bytes + (data_bytes & 1)
    return _RIFF.pack(b"RIFF", riff_size, b"WAVE") + chunks + _CHUNK.pack(b"data", data_bytes)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy_range(src: int, dst: int, offset: int, count: int, path: Path) -> None:
    """Append ``count`` bytes of ``src`` from ``offset`` to ``dst``: in the kernel when the file
    systems allow it, else through one bounded buffer."""
    copied = 0
    kernel = hasattr(os, "copy_file_range")
    while copied < count:
        if kernel:
            try:
                n = os.copy_file_range(src, dst, count - copied, offset + copied)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
                    raise
                kernel = False
                continue
        else:
            block = os.pread(src, min(COPY_BUFFER_BYTES, count - copied), offset + copied)
            n = len(block)
            _write_all(dst, block)
        if n == 0 and kernel:
            kernel = False  # some file systems report 0 instead of refusing: let read() tell EOF
            continue
        if n == 0:
            raise RecordingError(
                "audio_unreadable", path,
                f"the data chunk ends after {copied} of its {count} bytes (file changed while converting?)",
            )
        copied += n


def _write_file_by_copy(final: Path, members: list[WavHeader], slot: FileSlot) -> list[tuple]:
    """Concatenate ``members`` (one layout) into ``final``: one header, then every member's
    sample bytes as they are in its file."""
    sample_rate, channels, subtype = members[0].layout
    frames = sum(h.frames for h in members)
    placements = _placements(members, slot, final)
    with atomic_path(final) as tmp:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _write_all(out, wav_header_bytes(sample_rate, channels, subtype, frames))
            for header in members:
                try:
                    src = os.open(header.path, os.O_RDONLY)
                except OSError as e:
                    raise RecordingError("audio_unreadable", header.path, f"cannot be opened: {e}") from None
                try:
                    _copy_range(src, out, header.data_offset, header.data_bytes, header.path)
                finally:
                    os.close(src)
            if (frames * channels * SAMPLE_BYTES[subtype]) & 1:
                _write_all(out, b"\0")  # RIFF pads an odd-sized chunk
        finally:
            os.close(out)
    return placements


def _copy_samples(header: WavHeader, out, block_frames: int) -> None:
    import soundfile as sf

    dtype = SAMPLE_DTYPES[header.subtype]
    copied = 0
    try:
        with sf.SoundFile(str(header.path)) as src:
            while True:
                block = src.read(block_frames, dtype=dtype, always_2d=True)
                if not len(block):
                    break
                out.write(block)
                copied += len(block)
    except (sf.SoundFileError, OSError) as e:
        raise RecordingError("audio_unreadable", header.path, f"reading samples failed after {copied} frames: {e}") from None
    if copied != header.frames:
        raise RecordingError(
            "audio_unreadable", header.path,
            f"header declares {header.frames} frames but {copied} could be read (file changed while converting?)",
        )


def _write_file_by_decoding(final: Path, members: list[WavHeader], slot: FileSlot, block_frames: int) -> list[tuple]:
    """Concatenate ``members`` into ``final`` through libsndfile, ``block_frames`` at a time."""
    import soundfile as sf

    sample_rate, channels, subtype = members[0].layout
    placements = _placements(members, slot, final)
    with atomic_path(final) as tmp:
        with sf.SoundFile(
            str(tmp), "w", samplerate=sample_rate, channels=channels, subtype=subtype, format="WAV"
        ) as out:
            for header in members:
                _copy_samples(header, out, block_frames)
    return placements


# ----------------------------------------------------------------------------- reading back


class EpisodeAudioMissing(DorobotError):
    """The episode has no audio for that microphone (its WAV was missing in the recording)."""


def load_episode_audio(dataset_root: Path | str, episode_index: int, audio_key: str) -> tuple[np.ndarray, int]:
    """One episode's samples for one microphone of a v3.0 dataset written by this project.

    Returns ``(samples, sample_rate)``: samples ``[round(from * rate), round(to * rate))`` of the
    episode's file, as int16 for 16-bit PCM (int32 for 24/32-bit, float for float WAVs), shape
    ``(frames,)`` for mono and ``(frames, channels)`` otherwise.
    """
    root = Path(dataset_root)
    info_path = root / INFO_PATH
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise OutputError(f"{info_path}: cannot read info.json: {e}") from e
    feature = info.get("features", {}).get(audio_key)
    if feature is None or feature.get("dtype") != "audio":
        raise OutputError(f"{info_path}: {audio_key!r} is not an audio feature of this dataset")
    names = ["episode_index", *(placement_column(audio_key, f) for f in PLACEMENT_FIELDS)]
    row = None
    episode_files = sorted(root.glob("meta/episodes/chunk-*/file-*.parquet"))
    for path in episode_files:
        table = pq.ParquetFile(path).read(columns=names)
        hits = np.flatnonzero(column_numpy(table.column("episode_index")) == int(episode_index))
        if hits.size:
            row = table.slice(int(hits[0]), 1).to_pylist()[0]
            break
    if row is None:
        raise OutputError(f"{root / 'meta' / 'episodes'}: no episode {episode_index}")
    chunk, file_, begin, end = (row[placement_column(audio_key, f)] for f in PLACEMENT_FIELDS)
    if chunk is None or file_ is None:
        raise EpisodeAudioMissing(
            f"{root}: episode {episode_index} has no {audio_key} audio (its WAV was missing in the recording)"
        )
    template = info.get("audio_path") or AUDIO_PATH
    try:
        path = resolve_inside(root, template.format(audio_key=audio_key, chunk_index=chunk, file_index=file_))
    except (KeyError, ValueError) as e:
        raise OutputError(f"{info_path}: audio_path {template!r} is unusable: {e}") from e
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            sample_rate = int(f.samplerate)
            start, stop = round(begin * sample_rate), round(end * sample_rate)
            if not 0 <= start <= stop <= f.frames:
                raise OutputError(
                    f"{path}: episode {episode_index} spans samples {start}..{stop}, the file has {f.frames}"
                )
            f.seek(start)
            samples = f.read(stop - start, dtype=SAMPLE_DTYPES.get(f.subtype, "float64"), always_2d=False)
    except sf.SoundFileError as e:
        raise OutputError(f"{path}: cannot read audio: {e}") from e
    return samples, sample_rate
