"""Read and validate a LeRobot v2.1 recording (also v2.0 and DoRobot's v2.1 variant with audio).

``read_recording`` returns a typed model or raises :class:`RecordingError` naming the file and the
fault. It reads only metadata, parquet footers (whose exact integer statistics prove the
``episode_index``/``task_index`` columns) and the ``index`` and ``timestamp`` columns of each
episode; nothing is written. Format facts: reference notes §1 (v2.1) and the DoRobot section.

pandas is not a dependency, yet pyarrow imports it (0.5 s, 30 MiB) on the first ``pa.array``,
``to_numpy`` or ``read_table`` when it happens to be installed. The modules of the conversion
path therefore build and read Arrow arrays through the buffer helpers below.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from dorobot_assets.lib.arrow import column_numpy, numpy_array
from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.fsutil import stat_fingerprint, tree_fingerprint
from dorobot_assets.lib.v30 import resolve_inside

INFO_FILE = "meta/info.json"
TASKS_FILE = "meta/tasks.jsonl"
EPISODES_FILE = "meta/episodes.jsonl"
EPISODES_STATS_FILE = "meta/episodes_stats.jsonl"
OP_DATAID_FILE = "meta/op_dataid.jsonl"
COMMON_RECORD_FILE = "meta/common_record.json"

DEFAULT_CHUNKS_SIZE = 1000  # LeRobot; DoRobot writes 10000 in info.json
SUPPORTED_VERSIONS = ("v2.0", "v2.1")
# Columns whose values tie rows to episodes/tasks; read from every episode to validate.
_KEY_COLUMNS = ("index", "episode_index", "task_index")
TIMESTAMP_TOLERANCE_S = 1e-4  # LeRobot's video frame lookup tolerance (notes §5)
NUMERIC_DTYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
}


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str
    shape: tuple[int, ...]
    spec: dict

    @property
    def is_video(self) -> bool:
        return self.dtype == "video"

    @property
    def is_audio(self) -> bool:
        return self.dtype == "audio"

    @property
    def is_column(self) -> bool:
        """Stored as a parquet column (videos live in mp4s, DoRobot audio in wavs)."""
        return self.dtype not in ("video", "audio")

    @property
    def is_numeric(self) -> bool:
        return self.dtype in NUMERIC_DTYPES


@dataclass
class Episode:
    index: int
    length: int
    tasks: list[str]
    extra: dict
    data_path: Path
    data_uncompressed_bytes: int
    video_paths: dict[str, Path] = field(default_factory=dict)
    audio_paths: dict[str, Path] = field(default_factory=dict)
    dataid: str | None = None
    # seconds the source timestamps are ahead of frame_index / fps (GR00T starts at 1/fps);
    # read_episode_data publishes them rebased to frame_index / fps
    timestamp_offset: float = 0.0

    def source_files(self) -> list[Path]:
        files = [self.data_path, *self.video_paths.values(), *self.audio_paths.values()]
        return [p for p in files if p.exists()]


class ParsedJsonList(Sequence):
    """A read-only list of JSON object texts that hands out each item's ``key`` member parsed
    (a fresh object each time)."""

    def __init__(self, texts: list[str], key: str):
        self._texts = texts
        self._key = key

    def __len__(self) -> int:
        return len(self._texts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [json.loads(t)[self._key] for t in self._texts[i]]
        return json.loads(self._texts[i])[self._key]


@dataclass
class Recording:
    root: Path
    info: dict
    version: str
    fps: float
    chunks_size: int
    features: dict[str, Feature]
    tasks: list[str]  # position == task_index
    episodes: list[Episode]
    has_episodes_stats: bool  # meta/episodes_stats.jsonl exists (v2.1) and was checked
    data_schema: pa.Schema
    dorobot_meta_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # quirks handled while reading
    dropped_features: list[str] = field(default_factory=list)  # declared, but left out of the output
    # recording_fingerprint of the files this model was read from; set once (see fingerprint())
    source_fingerprint: str | None = field(default=None, repr=False, compare=False)

    @property
    def episodes_stats_lines(self) -> list[str] | None:
        """Each episode's line of episodes_stats.jsonl as text (position == episode_index), None
        for v2.0. Read from the file again on each access and checked as read_recording checked
        it: only the episode_stats step needs them, and the model, which stays in memory through
        every step, held 4.4 MiB of them at 2000 episodes. A file changed since read_recording
        fails the same checks, or changes the fingerprint that info verifies before publishing."""
        if not self.has_episodes_stats:
            return None
        return _episode_stats_texts(self.root / EPISODES_STATS_FILE, len(self.episodes))

    @property
    def episodes_stats(self) -> Sequence[dict] | None:
        """The v2.1 per-episode stats; an episode's dict is parsed when it is read (text is ~5x
        smaller than the Python objects)."""
        lines = self.episodes_stats_lines
        return None if lines is None else ParsedJsonList(lines, "stats")

    @property
    def is_dorobot(self) -> bool:
        return "dorobot_dataset_version" in self.info

    @property
    def video_keys(self) -> list[str]:
        return sorted(k for k, f in self.features.items() if f.is_video)

    @property
    def audio_keys(self) -> list[str]:
        return sorted(k for k, f in self.features.items() if f.is_audio)

    @property
    def column_features(self) -> list[str]:
        return [k for k, f in self.features.items() if f.is_column]

    @property
    def total_frames(self) -> int:
        return sum(e.length for e in self.episodes)

    def fingerprint(self) -> str:
        """The fingerprint of the files as this model was read: it differs from a later
        ``recording_fingerprint(root)`` whenever a file was added, removed, resized or touched
        since. Computed once per model (a stat walk of a 6000-file recording costs ~0.1 s, and
        every asset asks several times)."""
        if self.source_fingerprint is None:
            self.source_fingerprint = recording_fingerprint(self.root)
        return self.source_fingerprint

    def episode_fingerprint(self, episode_index: int) -> str:
        return stat_fingerprint(self.episodes[episode_index].source_files(), self.root)


def recording_fingerprint(root: Path) -> str:
    return tree_fingerprint(Path(root))


# ----------------------------------------------------------------------------- helpers


def _fail(code: str, path: Path, fault: str) -> RecordingError:
    return RecordingError(code, path, fault)


def _read_json(path: Path, missing_code: str, bad_code: str) -> object:
    if not path.is_file():
        raise _fail(missing_code, path, "file is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(bad_code, path, f"not valid JSON: {e}") from e


def _read_jsonl(path: Path, missing_code: str, bad_code: str, required: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        raise _fail(missing_code, path, "file is missing")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise _fail(bad_code, path, f"line {lineno} is not valid JSON: {e}") from e
            if not isinstance(row, dict):
                raise _fail(bad_code, path, f"line {lineno} is not a JSON object")
            missing = [k for k in required if k not in row]
            if missing:
                raise _fail(bad_code, path, f"line {lineno} lacks {', '.join(missing)}")
            rows.append(row)
    return rows


def _check_template(root: Path, info_path: Path, key: str, template: str, sample: dict) -> None:
    if not isinstance(template, str):
        raise _fail("bad_info", info_path, f"{key} must be a string, got {template!r}")
    try:
        rel = template.format(**sample)
    except (KeyError, IndexError, ValueError) as e:
        raise _fail("bad_info", info_path, f"{key} {template!r} cannot be formatted: {e}") from e
    if Path(rel).is_absolute():
        raise _fail("unsafe_path", info_path, f"{key} {template!r} is an absolute path")
    try:
        resolve_inside(root, rel)
    except ValueError:
        raise _fail("unsafe_path", info_path, f"{key} {template!r} escapes the recording folder")


def _episode_path(
    root: Path, template: str, chunks_size: int, episode_index: int, folders: dict | None = None, **extra
) -> Path:
    """``resolve_inside(root, <template formatted>)``. With ``folders`` (one dict per read), each
    folder is resolved once and a file alone only when it is a symlink: the same result without
    a realpath walk per file (a quarter of reading a 2000-episode recording). The symlinks of a
    folder come from one listing of it (the entries' types), not an lstat per file."""
    rel = template.format(
        episode_chunk=episode_index // chunks_size, episode_index=episode_index, **extra
    )
    head, _, name = rel.rpartition("/")
    if folders is None or name in ("", ".", ".."):
        return resolve_inside(root, rel)
    known = folders.get(head)
    if known is None:
        folder = resolve_inside(root, head or ".")
        try:
            with os.scandir(folder) as entries:
                links = {e.name for e in entries if e.is_symlink()}
        except OSError:  # not a folder (yet): its files are reported missing where they are used
            links = set()
        known = folders[head] = (folder, links)
    folder, links = known
    return resolve_inside(root, rel) if name in links else folder / name


# ----------------------------------------------------------------------------- reader


def read_info(root: Path) -> dict:
    info_path = root / INFO_FILE
    info = _read_json(info_path, "info_missing", "info_unparsable")
    if not isinstance(info, dict):
        raise _fail("info_unparsable", info_path, "top level is not a JSON object")
    version = info.get("codebase_version")
    if not isinstance(version, str) or not version.startswith("v2."):
        raise _fail(
            "unsupported_version", info_path,
            f"codebase_version is {version!r}; only v2.x recordings (v2.0, v2.1) are converted",
        )
    if version not in SUPPORTED_VERSIONS:
        raise _fail("unsupported_version", info_path, f"codebase_version {version!r} is not v2.0 or v2.1")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise _fail("bad_info", info_path, f"required key {key!r} is missing")
    if not isinstance(info["features"], dict) or not info["features"]:
        raise _fail("bad_info", info_path, "features must be a non-empty object")
    try:
        fps = float(info["fps"])
    except (TypeError, ValueError):
        raise _fail("bad_info", info_path, f"fps {info['fps']!r} is not a number")
    if not fps > 0:
        raise _fail("bad_info", info_path, f"fps must be > 0, got {info['fps']!r}")
    return info


def _parse_features(info: dict, info_path: Path) -> dict[str, Feature]:
    features = {}
    for name, spec in info["features"].items():
        if "/" in name:
            raise _fail(
                "bad_feature_name", info_path,
                f"feature name {name!r} contains '/', which v3.0 uses as its column separator",
            )
        if not isinstance(spec, dict) or "dtype" not in spec or "shape" not in spec:
            raise _fail("bad_info", info_path, f"feature {name!r} needs dtype and shape")
        try:
            shape = tuple(int(s) for s in spec["shape"])
        except (TypeError, ValueError):
            raise _fail("bad_info", info_path, f"feature {name!r} has a bad shape {spec['shape']!r}")
        features[name] = Feature(name=name, dtype=str(spec["dtype"]), shape=shape, spec=spec)
    return features


def read_recording(root: Path | str, *, missing_cameras: str = "error") -> Recording:
    """Read and validate a v2.x recording. Raises RecordingError on the first fault found.

    A camera declared in info.json with no mp4 file at all (GR00T's ``egoview``, or a recording
    copied without its videos) is refused by default; ``missing_cameras="drop"`` leaves it out
    of the model (and so of the output) with a note. A camera with only *some* mp4s missing is
    always refused: its episodes could not be placed.
    """
    root = Path(root)
    if not root.is_dir():
        raise _fail("recording_missing", root, "recording folder does not exist")
    info_path = root / INFO_FILE
    info = read_info(root)
    version = info["codebase_version"]
    features = _parse_features(info, info_path)
    chunks_size = int(info.get("chunks_size") or DEFAULT_CHUNKS_SIZE)
    if chunks_size <= 0:
        raise _fail("bad_info", info_path, f"chunks_size must be > 0, got {chunks_size}")

    video_keys = sorted(k for k, f in features.items() if f.is_video)
    audio_keys = sorted(k for k, f in features.items() if f.is_audio)
    sample = {"episode_chunk": 0, "episode_index": 0}
    _check_template(root, info_path, "data_path", info["data_path"], sample)
    # Cameras and microphones each need their per-episode template, and it must stay inside.
    for template_key, name_key, what, keys in (
        ("video_path", "video_key", "cameras", video_keys),
        ("audio_path", "audio_key", "microphones", audio_keys),
    ):
        if not keys:
            continue
        if not info.get(template_key):
            raise _fail("bad_info", info_path, f"{what} {keys} are declared but {template_key} is null")
        for k in keys:
            _check_template(root, info_path, template_key, info[template_key], {**sample, name_key: k})
    video_template = info.get("video_path")
    audio_template = info.get("audio_path")

    # tasks.jsonl
    tasks_path = root / TASKS_FILE
    task_rows = _read_jsonl(tasks_path, "tasks_missing", "tasks_unparsable", ("task_index", "task"))
    task_rows.sort(key=lambda r: r["task_index"])
    task_indices = [r["task_index"] for r in task_rows]
    if task_indices != list(range(len(task_rows))):
        raise _fail(
            "tasks_not_contiguous", tasks_path,
            f"task_index values must be 0..{len(task_rows) - 1} without gaps or repeats, got {task_indices[:20]}",
        )
    tasks = [str(r["task"]) for r in task_rows]

    # episodes.jsonl (DoRobot's async saver may write lines out of order: sort)
    episodes_path = root / EPISODES_FILE
    ep_rows = _read_jsonl(episodes_path, "episodes_missing", "episodes_unparsable", ("episode_index", "length"))
    ep_rows.sort(key=lambda r: r["episode_index"])
    ep_indices = [r["episode_index"] for r in ep_rows]
    if ep_indices != list(range(len(ep_rows))):
        seen = set()
        dup = next((i for i in ep_indices if i in seen or seen.add(i)), None)
        gap = next((i for i, e in enumerate(ep_indices) if e != i), None)
        what = f"episode {dup} appears twice" if dup is not None else f"episode {gap} is missing"
        raise _fail(
            "episodes_not_contiguous", episodes_path,
            f"episode_index values must be 0..{len(ep_rows) - 1}: {what}",
        )
    if not ep_rows:
        raise _fail("episodes_unparsable", episodes_path, "no episodes")

    # episodes_stats.jsonl (absent in v2.0)
    stats_path = root / EPISODES_STATS_FILE
    has_stats = stats_path.exists()
    if has_stats:
        _episode_stats_texts(stats_path, len(ep_rows))  # checked now, before anything is written
    elif version == "v2.1":
        raise _fail("stats_missing", stats_path, "file is missing (required in v2.1)")

    dataids: dict[int, str] = {}
    op_path = root / OP_DATAID_FILE
    if op_path.exists():
        for row in _read_jsonl(op_path, "dataid_missing", "dataid_unparsable", ("episode_index", "dataid")):
            dataids[int(row["episode_index"])] = str(row["dataid"])
    dorobot_meta = [rel for rel in (OP_DATAID_FILE, COMMON_RECORD_FILE) if (root / rel).is_file()]
    if (root / COMMON_RECORD_FILE).is_file():
        _read_json(root / COMMON_RECORD_FILE, "common_record_missing", "common_record_unparsable")

    # Per-episode files, footers and key columns.
    column_features = [k for k, f in features.items() if f.is_column]
    expected_cols = set(column_features)
    episodes: list[Episode] = []
    schema0: pa.Schema | None = None
    running_index = 0
    n_tasks = len(tasks)
    fps = float(info["fps"])
    folders: dict[str, tuple[Path, set[str]]] = {}  # resolved folders of this read and their symlinks (_episode_path)
    leaf_columns: dict[tuple[str, ...], dict[str, int]] = {}  # per column layout: name -> parquet leaf
    for row in ep_rows:
        e = row["episode_index"]
        data_path = _episode_path(root, info["data_path"], chunks_size, e, folders)
        if not data_path.is_file():
            raise _fail("missing_data_file", data_path, f"data file of episode {e} is missing")
        try:
            pf = open_parquet(data_path)
            schema = pf.schema_arrow
            md = pf.metadata
        except Exception as ex:  # pyarrow raises several types for corrupt files
            raise _fail("data_unreadable", data_path, f"not a readable parquet file: {ex}") from ex
        with pf:
            names = tuple(schema.names)
            cols = set(names)
            if cols != expected_cols:
                missing = sorted(expected_cols - cols)
                extra = sorted(cols - expected_cols)
                parts = []
                if missing:
                    parts.append(f"declared in info.json features but absent: {missing}")
                if extra:
                    parts.append(f"present but not declared in info.json features: {extra}")
                raise _fail("columns_mismatch", data_path, "; ".join(parts))
            if schema0 is None:
                schema0 = schema
            elif not schema.equals(schema0):
                for name in column_features:
                    if schema.field(name).type != schema0.field(name).type:
                        raise _fail(
                            "schema_mismatch", data_path,
                            f"column {name!r} is {schema.field(name).type}, episode 0 has {schema0.field(name).type}",
                        )
            n = md.num_rows
            length = int(row["length"])
            if n != length:
                raise _fail(
                    "length_mismatch", data_path,
                    f"has {n} rows but {EPISODES_FILE} says episode {e} has length {length}",
                )
            n_groups, n_leaves = md.num_row_groups, md.num_columns
            uncompressed = 0
            for g in range(n_groups):
                group = md.row_group(g)
                uncompressed += sum(group.column(c).total_uncompressed_size for c in range(n_leaves))
            leaves = leaf_columns.get(names)
            if leaves is None:
                leaves = leaf_columns[names] = {md.schema.column(c).path: c for c in range(n_leaves)}
            # Exact footer statistics prove these two columns without decoding them; anything the
            # footer leaves open (no statistics, nulls, a value out of range) is read and checked.
            proven = set()
            if "episode_index" in cols and _int_range(md, leaves.get("episode_index")) == (e, e):
                proven.add("episode_index")
            task_range = _int_range(md, leaves.get("task_index")) if "task_index" in cols else None
            if task_range is not None and 0 <= task_range[0] and task_range[1] < n_tasks:
                proven.add("task_index")
            key_cols = [c for c in (*_KEY_COLUMNS, "timestamp") if c in cols and c not in proven]
            try:
                table = pf.read(columns=key_cols, use_threads=False)
            except Exception as ex:
                raise _fail("data_unreadable", data_path, f"cannot read columns {key_cols}: {ex}") from ex
        if "index" in cols:
            idx = column_numpy(table.column("index"))
            expected = np.arange(running_index, running_index + n)
            if not np.array_equal(idx, expected):
                bad = int(np.argmax(idx != expected))
                raise _fail(
                    "index_not_contiguous", data_path,
                    f"column 'index' must continue from {running_index} across episodes; "
                    f"row {bad} has {int(idx[bad])}, expected {int(expected[bad])}",
                )
        if "episode_index" in cols and "episode_index" not in proven:
            ei = column_numpy(table.column("episode_index"))
            if n and not np.all(ei == e):
                bad = int(np.argmax(ei != e))
                raise _fail(
                    "episode_index_mismatch", data_path,
                    f"row {bad} has episode_index {int(ei[bad])}, the file belongs to episode {e}",
                )
        if "task_index" in cols and "task_index" not in proven and n:
            ti = column_numpy(table.column("task_index"))
            unknown = sorted(set(np.unique(ti).tolist()) - set(range(n_tasks)))
            if unknown:
                raise _fail(
                    "unknown_task_index", data_path,
                    f"task_index values {unknown[:10]} are not in {TASKS_FILE} ({n_tasks} tasks)",
                )
        running_index += n
        offset = _timestamp_offset(table.column("timestamp"), fps) if "timestamp" in cols and n else 0.0

        video_paths: dict[str, Path] = {}
        for k in video_keys:
            p = _episode_path(root, video_template, chunks_size, e, folders, video_key=k)
            video_paths[k] = p
        audio_paths = {
            k: _episode_path(root, audio_template, chunks_size, e, folders, audio_key=k) for k in audio_keys
        }
        extra = {k: v for k, v in row.items() if k not in ("episode_index", "tasks", "length")}
        episodes.append(
            Episode(
                index=e, length=length, tasks=list(row.get("tasks") or []), extra=extra,
                data_path=data_path, data_uncompressed_bytes=uncompressed,
                video_paths=video_paths, audio_paths=audio_paths, dataid=dataids.get(e),
                timestamp_offset=offset,
            )
        )

    # A data file that episodes.jsonl does not list means the metadata lost an episode (the
    # official converter counts files and would refuse too): never silently leave data behind.
    data_top = root / Path(info["data_path"]).parts[0]
    listed = {e.data_path for e in episodes}
    listed_text = {str(p) for p in listed}  # a resolve() per file costs more than the rest of this check
    unlisted = sorted(
        p for p in data_top.rglob("*.parquet") if str(p) not in listed_text and p.resolve() not in listed
    ) if data_top.is_dir() else []
    if unlisted:
        raise _fail(
            "unlisted_data_file", unlisted[0],
            f"data file is not listed in {EPISODES_FILE} ({len(episodes)} episodes); "
            f"{len(unlisted)} such file(s)",
        )

    notes: list[str] = []
    dropped: list[str] = []
    for k in video_keys:
        absent = [ep.index for ep in episodes if not ep.video_paths[k].is_file()]
        if not absent:
            continue
        first = episodes[absent[0]].video_paths[k]
        if len(absent) == len(episodes) and missing_cameras == "drop":
            del features[k]
            dropped.append(k)
            for ep in episodes:
                del ep.video_paths[k]
            notes.append(f"camera {k!r} is declared in info.json but has no mp4 files: left out of the output")
            continue
        hint = " (use the missing_cameras=drop setting to leave it out)" if len(absent) == len(episodes) else ""
        raise _fail(
            "missing_video_file", first,
            f"camera {k!r}: {len(absent)} of {len(episodes)} episodes have no mp4 "
            f"(episodes {absent[:10]}{'...' if len(absent) > 10 else ''}){hint}",
        )

    if audio_keys:
        # An unreadable WAV must stop every asset before it writes, not only the audio one.
        from dorobot_assets.lib.audio import read_wav_header  # lib.audio imports this module

        for ep in episodes:
            for path in ep.audio_paths.values():
                if path.is_file():  # a missing WAV is allowed: its episode gets null audio columns
                    read_wav_header(path)

    notes.extend(_quirk_notes(info, features, episodes, len(tasks), chunks_size))

    assert schema0 is not None
    return Recording(
        root=root, info=info, version=version, fps=float(info["fps"]), chunks_size=chunks_size,
        features=features, tasks=tasks, episodes=episodes, has_episodes_stats=has_stats,
        data_schema=schema0, dorobot_meta_files=dorobot_meta, notes=notes, dropped_features=dropped,
    )


IN_MEMORY_PARQUET_BYTES = 8 * 1024 * 1024


def open_parquet(path: Path, *, whole_file: bool = False) -> pq.ParquetFile:
    """A ParquetFile. A small episode file (or any, with ``whole_file``: the caller reads it
    all anyway) is read into memory with one ``read()`` first: Arrow then parses the footer and
    reads pages from that buffer, 20-30% less CPU per file than opening it by path."""
    if whole_file or os.stat(path).st_size <= IN_MEMORY_PARQUET_BYTES:
        with open(path, "rb") as f:
            return pq.ParquetFile(pa.BufferReader(f.read()), pre_buffer=False)
    return pq.ParquetFile(path)


def _int_range(md: pq.FileMetaData, leaf: int | None) -> tuple[int, int] | None:
    """``(min, max)`` of an integer column over the whole file as its footer states it, or None
    unless every row group carries min/max and a zero null count for it (parquet's integer
    statistics are exact)."""
    if leaf is None or md.num_row_groups == 0:
        return None
    lo = hi = None
    for g in range(md.num_row_groups):
        st = md.row_group(g).column(leaf).statistics
        if (st is None or st.physical_type not in ("INT32", "INT64") or not st.has_min_max
                or not st.has_null_count or st.null_count != 0):
            return None
        lo = st.min if lo is None else min(lo, st.min)
        hi = st.max if hi is None else max(hi, st.max)
    return lo, hi


_STATS_LINE_SCHEMA = pa.schema([("episode_index", pa.int64()), ("stats", pa.struct([]))])


def _read_stats_lines(path: Path) -> list[tuple[int, str]]:
    """``(episode_index, line)`` per line of episodes_stats.jsonl, validated as ``_read_jsonl``
    validates it (each line one JSON object with ``episode_index`` and ``stats``).

    The stats are numbers mostly: Python's json needs ~0.4 s to parse 2000 episodes' worth and
    ~0.3 s more to serialise them back, Arrow's C++ parser checks the same syntax in ~0.03 s.
    Lines are kept as text and parsed on access (``Recording.episodes_stats``). Whatever Arrow
    does not accept exactly as one object per line (numbers beyond a double, duplicate keys, a
    float episode_index, an object spread over lines...) is left to the Python reader, so
    results and error messages are the same as before.
    """
    try:
        with open(path, encoding="utf-8") as f:  # text mode: \r\n and \r become \n, as when iterating
            lines = [line for line in f.read().split("\n") if line.strip()]
    except UnicodeDecodeError:
        lines = None
    if lines and all(line.strip()[0] == "{" and line.strip()[-1] == "}" for line in lines):
        data = "\n".join(lines).encode("utf-8")
        try:
            table = pa_json.read_json(
                pa.BufferReader(data),
                read_options=pa_json.ReadOptions(use_threads=False, block_size=max(1 << 20, len(data) + 1)),
                parse_options=pa_json.ParseOptions(explicit_schema=_STATS_LINE_SCHEMA, unexpected_field_behavior="ignore"),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            table = None
        # One row per line proves every line was one whole object (a line starting with "{"
        # cannot continue an object the previous line left open after its "}").
        if (table is not None and table.num_rows == len(lines)
                and not table.column("episode_index").null_count and not table.column("stats").null_count):
            return list(zip(column_numpy(table.column("episode_index")).tolist(), lines))
    rows = _read_jsonl(path, "stats_missing", "stats_unparsable", ("episode_index", "stats"))
    return [(row["episode_index"], json.dumps(row)) for row in rows]


def _episode_stats_texts(path: Path, episodes: int) -> list[str]:
    """The lines of episodes_stats.jsonl in episode order, one per episode 0..episodes-1."""
    lines = _read_stats_lines(path)
    lines.sort(key=lambda r: r[0])
    if [e for e, _ in lines] != list(range(episodes)):
        raise _fail("stats_mismatch", path, f"has stats for {len(lines)} episodes, episodes.jsonl lists {episodes}")
    return [text for _, text in lines]


def _timestamp_offset(column: pa.ChunkedArray, fps: float) -> float:
    """The constant by which an episode's timestamps exceed ``frame / fps`` (0.0 when they start
    at 0, or when they are irregular: validation reports those, we do not guess a fix)."""
    if column.null_count:
        return 0.0
    ts = column_numpy(column).astype(np.float64)
    offset = float(ts[0])
    if abs(offset) <= TIMESTAMP_TOLERANCE_S:
        return 0.0
    if np.max(np.abs(ts - offset - np.arange(len(ts)) / fps)) > TIMESTAMP_TOLERANCE_S:
        return 0.0
    return offset


def _quirk_notes(info: dict, features: dict[str, Feature], episodes: list[Episode], n_tasks: int,
                 chunks_size: int) -> list[str]:
    """What this recording does differently from a clean v2.1 one, and how it is converted."""
    notes = []
    if info["codebase_version"] == "v2.0":
        notes.append("codebase_version v2.0: no episodes_stats.jsonl, so statistics are computed from the data")
    for name, spec in info["features"].items():
        if name in features and spec.get("dtype") == "video" and "video_info" in spec and "info" not in spec:
            notes.append(f"camera {name!r} describes its stream under 'video_info' (v1.6-era key): written as 'info'")
    if "frame_index" not in info["features"]:
        notes.append("no frame_index column: converted without one (LeRobot's v3.0 reader finds "
                     "frames by index and timestamp)")
    shifted = [e for e in episodes if e.timestamp_offset]
    if shifted:
        notes.append(
            f"timestamps of {len(shifted)} of {len(episodes)} episodes start at {shifted[0].timestamp_offset:.4g} s "
            "instead of 0: rebased to frame_index / fps, so each frame's video image is found at "
            "from_timestamp + timestamp"
        )
    n_videos = len(episodes) * sum(1 for f in features.values() if f.is_video)
    actual = {
        "total_episodes": len(episodes), "total_frames": sum(e.length for e in episodes),
        "total_tasks": n_tasks, "total_chunks": (len(episodes) - 1) // chunks_size + 1, "total_videos": n_videos,
    }
    stale = [f"{k} {info[k]!r} (files: {v})" for k, v in actual.items() if k in info and info[k] != v]
    splits = info.get("splits")
    if isinstance(splits, dict) and list(splits) == ["train"] and splits["train"] != f"0:{len(episodes)}":
        stale.append(f"splits train {splits['train']!r} (files: '0:{len(episodes)}')")
    if stale:
        notes.append("info.json totals disagree with the files, recomputed: " + "; ".join(stale))
    return notes


def read_episode_data(rec: Recording, episode_index: int, columns: list[str] | None = None) -> pa.Table:
    """One episode's rows as they are published: the source values, except timestamps that start
    at an offset (``Episode.timestamp_offset``), which become ``frame / fps`` in their own type."""
    ep = rec.episodes[episode_index]
    try:
        # ParquetFile.read, not read_table: no dataset discovery (and no pandas); one thread:
        # the per-column threads of a small file cost more than they save.
        with open_parquet(ep.data_path, whole_file=True) as pf:
            if columns is not None and pf.schema_arrow.names == list(columns):
                columns = None  # the whole file, in that order: skips the column lookup
            table = pf.read(columns=columns, use_threads=False)
    except Exception as ex:  # pyarrow raises several types for corrupt files
        raise _fail("data_unreadable", ep.data_path, f"cannot read episode {episode_index}: {ex}") from ex
    if ep.timestamp_offset and "timestamp" in table.column_names:
        i = table.column_names.index("timestamp")
        field_ = table.schema.field(i)
        values = np.arange(table.num_rows) / rec.fps
        table = table.set_column(i, field_, numpy_array(values, field_.type))
    return table


MODEL_VERSION = 4  # bump when Recording's fields change: older cached pickles are then rebuilt

# The model last returned by read_recording_cached in this process. With the in-process executor
# every asset of a run asks for it: unpickling a 2000-episode model costs 0.3-1 s (its
# per-episode stats are many small objects), a dict lookup nothing. Callers never mutate it.
_LAST_READ: dict[tuple, Recording] = {}


def read_recording_cached(
    root: Path | str, cache_dir: Path | str | None, *, missing_cameras: str = "error", fingerprint: str | None = None,
) -> Recording:
    """``read_recording`` memoised on disk (and in memory) by the recording's fingerprint.

    Every asset of a run needs the model; the cache turns the per-asset re-read (footers and
    key columns of every episode) into one ``stat`` walk when nothing changed. A caller that
    took the fingerprint already (once per run) passes it as ``fingerprint``.
    """
    import pickle

    from dorobot_assets.lib.fsutil import atomic_path

    root = Path(root)
    if cache_dir is None:
        return read_recording(root, missing_cameras=missing_cameras)
    fp = fingerprint or recording_fingerprint(root)
    cache = Path(cache_dir) / f"recording-{fp}-{missing_cameras}-m{MODEL_VERSION}.pickle"
    memo_key = (root, fp, missing_cameras, cache)
    if memo_key in _LAST_READ and cache.exists():
        return _LAST_READ[memo_key]
    if cache.exists():
        try:
            with open(cache, "rb") as f:
                rec = pickle.load(f)
            if isinstance(rec, Recording) and rec.root == root:
                rec.source_fingerprint = fp
                _LAST_READ.clear()
                _LAST_READ[memo_key] = rec
                return rec
        except Exception:  # a stale or foreign cache file is simply rebuilt
            pass
    rec = read_recording(root, missing_cameras=missing_cameras)
    # Taken before the read: a file changed meanwhile shows as a mismatch at the next load.
    rec.source_fingerprint = fp
    for old in Path(cache_dir).glob("recording-*.pickle"):
        old.unlink(missing_ok=True)
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(rec, f, protocol=pickle.HIGHEST_PROTOCOL)
    _LAST_READ.clear()
    _LAST_READ[memo_key] = rec
    return rec
