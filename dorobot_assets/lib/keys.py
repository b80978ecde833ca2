"""Partition keys for recordings, and the registry that maps a key back to its folder.

Dagster's UI rejects some characters in partition keys (space, comma, ``|``, ``[``, ``]``), so a
recording folder name is sanitised to ``[a-z0-9_-]``. Two folders that sanitise alike get
``-2``, ``-3``... in the order they are registered; the registry file keeps the mapping so a key
never changes meaning once given out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
from pathlib import Path
from typing import Iterator

from dorobot_assets.lib.errors import ConfigError
from dorobot_assets.lib.fsutil import write_json_atomic

REGISTRY_FILE = "recordings.json"
_BAD = re.compile(r"[^a-z0-9_-]+")


def sanitize_key(name: str) -> str:
    key = _BAD.sub("_", name.strip().lower())
    key = re.sub(r"_+", "_", key).strip("_-")
    return key or "recording"


class RecordingRegistry:
    """A small JSON table ``{key: absolute folder}`` under the work root, guarded by a file lock."""

    def __init__(self, work_root: Path | str):
        self.work_root = Path(work_root)
        self.path = self.work_root / REGISTRY_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        self.work_root.mkdir(parents=True, exist_ok=True)
        with open(self.work_root / (REGISTRY_FILE + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            table = self._read()
            yield table

    def _read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.path}: registry is not valid JSON ({e})") from e

    def entries(self) -> dict[str, str]:
        return self._read()

    def lookup(self, key: str) -> Path | None:
        folder = self._read().get(key)
        return Path(folder) if folder else None

    def key_for(self, folder: Path) -> str | None:
        folder = str(Path(folder).resolve())
        for key, value in self._read().items():
            if value == folder:
                return key
        return None

    def register(self, folder: Path | str) -> str:
        """Return the folder's key, assigning a new one (and saving it) if it has none."""
        folder = str(Path(folder).resolve())
        with self._locked() as table:
            for key, value in table.items():
                if value == folder:
                    return key
            base = sanitize_key(Path(folder).name)
            key, n = base, 1
            while key in table:
                n += 1
                key = f"{base}-{n}"
            table[key] = folder
            write_json_atomic(self.path, table, indent=2)
            return key


def resolve_recording(key: str, inbox: Path | None, registry: RecordingRegistry) -> Path:
    """The source folder of a partition key: the registry first, then a folder in the inbox."""
    found = registry.lookup(key)
    if found is not None:
        return found
    if inbox is not None and inbox.is_dir():
        matches = sorted(p for p in inbox.iterdir() if p.is_dir() and sanitize_key(p.name) == key)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ConfigError(
                f"partition key {key!r} matches several folders in {inbox}: "
                f"{[m.name for m in matches]}; register them with `dorobot-assets register`"
            )
    raise ConfigError(
        f"no recording for partition key {key!r}: not in the registry {registry.path} "
        f"and no folder in the inbox {inbox} sanitises to it"
    )
