"""audio/{audio_key}/chunk-XXX/file-YYY.wav: DoRobot microphones concatenated (issue: audio).

DoRobot keeps one WAV per episode and microphone; v3.0 has no audio, so we pack it the v3.0 way:
per microphone, episodes concatenated in order into few WAV files, placed with the shared
:mod:`rollover` rule, and a new file whenever the sample rate, channel count or sample format
changes (one WAV header cannot describe two). An episode's position is an integer sample range;
``from_timestamp``/``to_timestamp`` are those sample offsets divided by the file's rate, so
``round(from * rate)`` and ``round(to * rate)`` give the range back exactly.

Every source WAV header is read before anything is written; samples are then copied in blocks,
so memory does not grow with the recording. An episode without its WAV is not an error: its
columns are null and :mod:`audio_checks` reports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from dorobot_assets.lib.data import remove_unplanned
from dorobot_assets.lib.errors import DorobotError, OutputError, RecordingError
from dorobot_assets.lib.fsutil import atomic_path
from dorobot_assets.lib.rollover import FileSlot, group_by_slot, plan_rollover
from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.v21 import Recording
from dorobot_assets.lib.v30 import AUDIO_PATH, INFO_PATH, MB, audio_file, resolve_inside

BLOCK_FRAMES = 1 << 16  # frames copied per read: 128 KiB for 16-bit mono
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

    @property
    def layout(self) -> tuple[int, int, str]:
        """What must be equal for two episodes to share one output file."""
        return (self.sample_rate, self.channels, self.subtype)

    @property
    def data_bytes(self) -> int:
        return self.frames * self.channels * SAMPLE_BYTES[self.subtype]


def read_wav_header(path: Path) -> WavHeader:
    """The header of a source WAV, or a RecordingError naming the file.

    Errors are not chained (``from None``): the fault text carries libsndfile's message, and
    error reporters that show the innermost cause must show ours.
    """
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
    return WavHeader(path, int(info.samplerate), int(info.channels), info.subtype, int(info.frames))


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


def _copy_samples(header: WavHeader, out: sf.SoundFile, block_frames: int) -> None:
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


def write_audio(
    rec: Recording,
    dataset_root: Path,
    settings: ConversionSettings,
    *,
    block_frames: int = BLOCK_FRAMES,
) -> AudioResult:
    dataset_root = Path(dataset_root)
    n = len(rec.episodes)
    columns: dict[str, pa.Array] = {"episode_index": pa.array([e.index for e in rec.episodes], pa.int64())}
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
        plans.append((key, present, present_headers, slots))

    for key, present, present_headers, slots in plans:
        placed: list[tuple | None] = [None] * n
        for slot, members in group_by_slot(slots):
            final = dataset_root / audio_file(key, slot.chunk_index, slot.file_index)
            placed_here = _write_file(final, [present_headers[j] for j in members], slot, block_frames)
            for j, placement in zip(members, placed_here):
                placed[present[j]] = placement
            result.files.append(final)
        chunk, file_, begin, end = zip(*[p if p is not None else (None,) * 4 for p in placed])
        columns[placement_column(key, "chunk_index")] = pa.array(chunk, pa.int64())
        columns[placement_column(key, "file_index")] = pa.array(file_, pa.int64())
        columns[placement_column(key, "from_timestamp")] = pa.array(begin, pa.float64())
        columns[placement_column(key, "to_timestamp")] = pa.array(end, pa.float64())

    removed = remove_unplanned(dataset_root / "audio", result.files, "*.wav")
    if removed:
        result.notes.append(f"removed {len(removed)} audio files of an earlier conversion")
    result.placements = pa.table(columns)
    result.bytes_written = sum(f.stat().st_size for f in result.files)
    return result


def _write_file(final: Path, members: list[WavHeader], slot: FileSlot, block_frames: int) -> list[tuple]:
    """Concatenate ``members`` into ``final``; returns (chunk, file, from, to) per member."""
    sample_rate, channels, subtype = members[0].layout
    placements = []
    offset = 0
    with atomic_path(final) as tmp:
        with sf.SoundFile(
            str(tmp), "w", samplerate=sample_rate, channels=channels, subtype=subtype, format="WAV"
        ) as out:
            for header in members:
                _copy_samples(header, out, block_frames)
                begin, end = sample_span_seconds(offset, header.frames, sample_rate, str(final))
                placements.append((slot.chunk_index, slot.file_index, begin, end))
                offset += header.frames
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
        table = pq.read_table(path, columns=names, filters=[("episode_index", "=", int(episode_index))])
        if table.num_rows:
            row = table.slice(0, 1).to_pylist()[0]
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
