"""Placement manifests: small parquet tables passed between assets under the work root.

Each artifact asset (data, videos, audio, episode stats) records, per episode, the columns it
contributes to ``meta/episodes`` (e.g. ``data/chunk_index`` ... ``dataset_to_index``). The
manifest carries the source fingerprint it was made from, so the episodes asset can refuse to
join placements made from different versions of a recording.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from dorobot_assets.lib.arrow import read_parquet, write_per_episode_table
from dorobot_assets.lib.errors import OutputError
from dorobot_assets.lib.fsutil import atomic_path

MANIFEST_DIR = "manifests"
_FINGERPRINT = b"dorobot.fingerprint"
_EXTRA = b"dorobot.extra"


def manifest_path(work_dir: Path, name: str) -> Path:
    return Path(work_dir) / MANIFEST_DIR / f"{name}.parquet"


def write_manifest(work_dir: Path, name: str, table: pa.Table, fingerprint: str, extra: dict | None = None) -> Path:
    meta = {_FINGERPRINT: fingerprint.encode(), _EXTRA: json.dumps(extra or {}).encode()}
    table = table.replace_schema_metadata(meta)
    path = manifest_path(work_dir, name)
    with atomic_path(path) as tmp:
        write_per_episode_table(table, tmp)
    return path


def read_manifest(work_dir: Path, name: str, fingerprint: str | None = None) -> tuple[pa.Table, dict]:
    """Read a manifest; with ``fingerprint``, refuse one made from another version of the source."""
    path = manifest_path(work_dir, name)
    if not path.exists():
        raise OutputError(f"{path}: manifest {name!r} is missing; materialize the {name} asset first")
    table = read_parquet(path)
    meta = table.schema.metadata or {}
    found = meta.get(_FINGERPRINT, b"").decode()
    if fingerprint is not None and found != fingerprint:
        raise OutputError(
            f"{path}: manifest {name!r} was made from source fingerprint {found}, the recording "
            f"is now {fingerprint}; re-materialize the {name} asset"
        )
    extra = json.loads(meta.get(_EXTRA, b"{}").decode())
    return table.replace_schema_metadata(None), extra


def has_manifest(work_dir: Path, name: str) -> bool:
    return manifest_path(work_dir, name).exists()
