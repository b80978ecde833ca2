"""Which folders of the inbox are recordings ready to convert, decided from ``stat`` alone.

The inbox sensor (``defs/sensors.py``) calls :func:`plan_tick` once per tick. A sub-folder is
*ready* when it holds a ``.ready`` marker, or when it has ``meta/info.json`` and nothing in it
changed for the settle time. Each ready folder is read only as far as its header (info.json
parsed, the jsonl files present); deeper faults surface as a failed run with the typed error.

The cursor remembers, per folder, the fingerprint it was last acted on at (a run requested, or
rejected as not a recording), so an unchanged folder is neither converted nor reported twice,
and any change to it (a re-upload, a touched file) makes it a candidate again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from dorobot_assets.lib.errors import ConfigError, RecordingError
from dorobot_assets.lib.fsutil import TMP_MARKER, tree_files, tree_fingerprint
from dorobot_assets.lib.v21 import EPISODES_FILE, INFO_FILE, TASKS_FILE, read_info

READY_MARKER = ".ready"

DEFAULT_INTERVAL_SECONDS = 30
DEFAULT_SETTLE_SECONDS = 60
DEFAULT_MAX_RUNS_PER_TICK = 10

INTERVAL_ENV = "DOROBOT_SENSOR_INTERVAL"
SETTLE_ENV = "DOROBOT_SETTLE_SECONDS"
MAX_RUNS_ENV = "DOROBOT_MAX_RUNS_PER_TICK"


def _env_number(environ: Mapping[str, str], name: str, default, cast, minimum):
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {raw}")
    return value


def sensor_interval_seconds(environ: Mapping[str, str] = os.environ) -> int:
    """Seconds between two scans (read when the definitions load)."""
    return _env_number(environ, INTERVAL_ENV, DEFAULT_INTERVAL_SECONDS, int, 1)


@dataclass(frozen=True)
class InboxSettings:
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    max_runs_per_tick: int = DEFAULT_MAX_RUNS_PER_TICK

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "InboxSettings":
        return cls(
            settle_seconds=_env_number(environ, SETTLE_ENV, DEFAULT_SETTLE_SECONDS, float, 0),
            max_runs_per_tick=_env_number(environ, MAX_RUNS_ENV, DEFAULT_MAX_RUNS_PER_TICK, int, 1),
        )


@dataclass(frozen=True)
class FolderScan:
    """What one ``stat`` walk of a folder found."""

    path: Path
    fingerprint: str  # the same fingerprint the ``recording`` asset reports as its data version
    last_change: float  # newest mtime or ctime of any file or sub-folder (epoch seconds)
    has_info: bool
    has_marker: bool


def scan_folder(folder: Path) -> FolderScan:
    files = tree_files(folder)
    # ctime as well as mtime: copies that preserve mtimes (cp -p, rsync -a) still set ctime to now.
    last_change = 0.0
    for path in [*files, *{f.parent for f in files}, folder]:
        st = path.stat()
        last_change = max(last_change, st.st_mtime, st.st_ctime)
    return FolderScan(
        path=folder,
        fingerprint=tree_fingerprint(folder),
        last_change=last_change,
        has_info=(folder / INFO_FILE).is_file(),
        has_marker=(folder / READY_MARKER).exists(),
    )


def header_fault(folder: Path) -> str | None:
    """Why ``folder`` is plainly not a v2.x recording, or None. Reads info.json only."""
    try:
        read_info(folder)
        for rel, code in ((TASKS_FILE, "tasks_missing"), (EPISODES_FILE, "episodes_missing")):
            if not (folder / rel).is_file():
                raise RecordingError(code, folder / rel, "file is missing")
    except RecordingError as e:
        return str(e)
    return None


@dataclass(frozen=True)
class Conversion:
    key: str
    folder: Path
    fingerprint: str

    @property
    def run_key(self) -> str:
        # The fingerprint makes a changed re-upload a new run; Dagster never repeats a run_key.
        return f"{self.key}:{self.fingerprint}"


@dataclass
class TickPlan:
    conversions: list[Conversion] = field(default_factory=list)
    invalid: list[tuple[Path, str]] = field(default_factory=list)  # (folder, reason)
    already_converted: list[Conversion] = field(default_factory=list)
    waiting: list[tuple[Path, str]] = field(default_factory=list)  # (folder, why not ready yet)
    deferred: list[Path] = field(default_factory=list)  # ready, but over this tick's cap
    unchanged: int = 0
    cursor: str = ""

    def summary(self) -> str:
        parts = [f"{len(self.conversions)} to convert"]
        if self.already_converted:
            parts.append(f"{len(self.already_converted)} already converted")
        if self.invalid:
            parts.append(f"{len(self.invalid)} not recordings")
        if self.waiting:
            parts.append(f"{len(self.waiting)} waiting: " + "; ".join(
                f"{p.name} ({why})" for p, why in self.waiting[:5]))
        if self.deferred:
            parts.append(f"{len(self.deferred)} deferred to the next tick (cap)")
        parts.append(f"{self.unchanged} unchanged")
        return ", ".join(parts)


def _load_cursor(cursor: str | None, inbox: Path) -> dict[str, str]:
    if not cursor:
        return {}
    try:
        state = json.loads(cursor)
    except json.JSONDecodeError:
        return {}  # an unreadable cursor only costs one re-scan; run keys still prevent repeats
    if not isinstance(state, dict) or state.get("inbox") != str(inbox):
        return {}
    folders = state.get("folders")
    return dict(folders) if isinstance(folders, dict) else {}


def _dump_cursor(inbox: Path, folders: dict[str, str]) -> str:
    return json.dumps({"inbox": str(inbox), "folders": folders}, sort_keys=True, separators=(",", ":"))


def inbox_folders(inbox: Path) -> list[Path]:
    """Candidate recording folders: visible sub-folders, in name order (the registration order)."""
    out = []
    with os.scandir(inbox) as entries:
        for entry in entries:
            if entry.name.startswith((".", TMP_MARKER)) or not entry.is_dir(follow_symlinks=True):
                continue
            out.append(Path(entry.path))
    return sorted(out, key=lambda p: p.name)


def plan_tick(
    inbox: Path,
    cursor: str | None,
    now: float,
    settings: InboxSettings,
    register: Callable[[Path], str],
    is_converted: Callable[[str, str], bool] = lambda key, fingerprint: False,
) -> TickPlan:
    """Decide what one tick does.

    ``register(folder) -> key`` gives the folder its partition key (the registry resolves name
    clashes; folders are registered in name order, so the outcome is deterministic).
    ``is_converted(key, fingerprint)`` says whether that exact state was converted already by
    other means (the UI or the shell), so the sensor does not repeat it.
    """
    inbox = Path(inbox).resolve()
    seen = _load_cursor(cursor, inbox)
    plan = TickPlan()
    acted: dict[str, str] = {}
    for folder in inbox_folders(inbox):
        try:
            scan = scan_folder(folder)
        except FileNotFoundError:
            continue  # vanished while we looked (an upload tool renaming things)
        if seen.get(folder.name) == scan.fingerprint:
            acted[folder.name] = scan.fingerprint
            plan.unchanged += 1
            continue
        quiet_for = now - scan.last_change
        if not scan.has_marker and quiet_for < settings.settle_seconds:
            plan.waiting.append(
                (folder, f"changed {quiet_for:.0f} s ago, settle time {settings.settle_seconds:g} s"))
            continue
        if not scan.has_marker and not scan.has_info:
            fault = f"{folder / INFO_FILE}: file is missing and there is no {READY_MARKER} marker"
        else:
            fault = header_fault(folder)
        if fault is not None:
            plan.invalid.append((folder, fault))
            acted[folder.name] = scan.fingerprint
            continue
        if len(plan.conversions) >= settings.max_runs_per_tick:
            plan.deferred.append(folder)
            continue
        conversion = Conversion(key=register(folder), folder=folder, fingerprint=scan.fingerprint)
        if is_converted(conversion.key, conversion.fingerprint):
            plan.already_converted.append(conversion)
        else:
            plan.conversions.append(conversion)
        acted[folder.name] = scan.fingerprint
    plan.cursor = _dump_cursor(inbox, acted)
    return plan
