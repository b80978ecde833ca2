"""audio/{audio_key}/chunk-XXX/file-YYY.wav: DoRobot microphones concatenated (issue: audio)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from dorobot_assets.lib.settings import ConversionSettings
from dorobot_assets.lib.v21 import Recording


@dataclass
class AudioResult:
    placements: pa.Table  # episode_index + audio/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}
    files: list[Path] = field(default_factory=list)
    bytes_written: int = 0
    features_info: dict[str, dict] = field(default_factory=dict)  # info.json features[<key>]["info"]
    missing: list[tuple[str, int]] = field(default_factory=list)  # (audio_key, episode) without a WAV
    notes: list[str] = field(default_factory=list)


def write_audio(rec: Recording, dataset_root: Path, settings: ConversionSettings) -> AudioResult:
    if rec.audio_keys:
        raise NotImplementedError("audio concatenation lands with the audio issue")
    return AudioResult(placements=pa.table({"episode_index": pa.array([e.index for e in rec.episodes], pa.int64())}))
