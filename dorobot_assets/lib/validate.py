"""DuckDB checks over any v3.0 dataset directory (issue: validation).

Each check is a plain function registered with :func:`check`; it receives a :class:`DatasetView`
and returns a :class:`CheckResult`. ``defs/checks.py`` turns every registered check into a
Dagster asset check on the asset it inspects; ``dorobot-assets validate`` runs them all.

All checks of one :class:`DatasetView` share its relations in one in-memory DuckDB database
(:meth:`DatasetView.connect` hands each a cursor): file listings, meta/episodes and the tasks are
read once per view; the data rows are scanned by each check (a few scalar columns). Nothing is
written to disk; :meth:`DatasetView.close` frees it.
Format facts (what LeRobot's reader relies on) come from reference notes §2 and §5.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import re
import string
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import duckdb
import numpy as np
import pyarrow as pa

from dorobot_assets.lib import mp4
from dorobot_assets.lib.arrow import int64_array, nested_list_numpy, string_array
from dorobot_assets.lib.errors import DorobotError
from dorobot_assets.lib.stats import STATS_PREFIX
from dorobot_assets.lib.v30 import (
    AUDIO_PATH,
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_AUDIO_FILE_SIZE_MB,
    DEFAULT_DATA_FILE_SIZE_MB,
    DEFAULT_VIDEO_FILE_SIZE_MB,
    INFO_PATH,
    MB,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    resolve_inside,
)

ERROR = "error"
WARNING = "warning"

# Modules that register more checks with this registry; one that does not exist yet is skipped.
CHECK_MODULES = ("dorobot_assets.lib.audio_checks", "dorobot_assets.lib.stats_checks")

MAX_OFFENDING = 10  # offending rows kept in a result
# LeRobot's reader accepts a decoded frame within this distance of the requested time (notes §5.6).
PTS_TOLERANCE_S = 1e-4


@dataclass
class CheckResult:
    name: str
    passed: bool
    severity: str  # ERROR or WARNING: what a failure means
    description: str
    counts: dict[str, int] = field(default_factory=dict)
    offending: list[dict] = field(default_factory=list)  # the first offending rows
    applicable: bool = True  # False: nothing to check here (e.g. no audio); passed is then True
    asset: str = ""  # filled in by run_check from the registry

    @property
    def is_error(self) -> bool:
        """A failure that makes the dataset invalid (blocks a conversion, exit 1 in validate)."""
        return not self.passed and self.severity == ERROR


class DatasetUnreadable(DorobotError):
    """The folder cannot be validated at all (no or unparsable meta/info.json)."""


class MissingInput(Exception):
    """A file a check needs is absent; the check fails naming it."""

    def __init__(self, relative: str):
        self.relative = relative
        super().__init__(f"{relative} is missing")


def q(name: str) -> str:
    """A quoted SQL identifier (column names contain '/', '.' and may be keywords like index)."""
    return '"' + name.replace('"', '""') + '"'


def _sql_str(path: Path | str) -> str:
    """A file path as an SQL string literal (paths may contain quotes)."""
    return "'" + str(path).replace("'", "''") + "'"


def _sql_list(paths: Iterable[Path]) -> str:
    return "[" + ", ".join(_sql_str(p) for p in paths) + "]"


# One in-memory DuckDB database per process; each DatasetView builds its relations in a schema of
# its own and hands every check a cursor set to it. Opening a database costs ~30 ms, once per asset
# step before; a cursor costs well under a millisecond.
_DATABASE: duckdb.DuckDBPyConnection | None = None
_DATABASE_LOCK = threading.Lock()
_SCHEMA_NUMBERS = itertools.count()


def _new_schema() -> tuple[duckdb.DuckDBPyConnection, str]:
    """A cursor on the process's database with a new schema as its default."""
    global _DATABASE
    with _DATABASE_LOCK:
        if _DATABASE is None:
            # One thread and an early return of freed memory: the checks scan a few columns, and
            # the conversion's memory budget (issue 8: 300 MiB) matters more than their speed.
            _DATABASE = duckdb.connect(config={"threads": 1, "allocator_flush_threshold": "4MB"})
        cursor = _DATABASE.cursor()
        schema = f"view_{next(_SCHEMA_NUMBERS)}"
    cursor.execute(f"CREATE SCHEMA {schema}")
    cursor.execute(f"SET schema = '{schema}'")
    return cursor, schema


@dataclass
class DatasetView:
    """What a check may look at: the dataset folder, its info (from info.json, or the pending
    one while a conversion has not yet published info.json) and, during a conversion, the
    source recording folder and the work folder.

    ``pending_episodes`` replaces meta/episodes while a conversion has not written it yet: the
    placements the videos/audio assets just produced, joined with the episode lengths.
    ``stats_mode`` is the conversion's statistics setting (``copy`` or ``recompute``), unknown
    (None) for a dataset validated on its own.
    """

    root: Path
    info: dict
    source: Path | None = None
    work: Path | None = None
    pending_episodes: pa.Table | None = None
    stats_mode: str | None = None
    # The shared DuckDB database, the relations already built in it, and values several checks
    # derive from the same input (see memo).
    _db: duckdb.DuckDBPyConnection | None = field(default=None, init=False, repr=False, compare=False)
    _schema: str = field(default="", init=False, repr=False, compare=False)
    _built: set = field(default_factory=set, init=False, repr=False, compare=False)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def open(cls, root: Path | str) -> "DatasetView":
        root = Path(root)
        path = root / INFO_PATH
        if not path.is_file():
            raise DatasetUnreadable(f"{path}: missing; {root} is not a (complete) v3.0 dataset")
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise DatasetUnreadable(f"{path}: not valid JSON ({e})") from e
        if not isinstance(info, dict):
            raise DatasetUnreadable(f"{path}: top level is not a JSON object")
        return cls(root=root, info=info)

    # --- info ---------------------------------------------------------------------------
    @property
    def fps(self) -> float:
        fps = self.info.get("fps")
        if not isinstance(fps, (int, float)) or not fps > 0:
            raise ValueError(f"{INFO_PATH}: fps {fps!r} is not a positive number")
        return float(fps)

    @property
    def features(self) -> dict[str, dict]:
        feats = self.info.get("features")
        return feats if isinstance(feats, dict) else {}

    def _keys_of(self, dtype: str) -> list[str]:
        return sorted(k for k, f in self.features.items() if isinstance(f, dict) and f.get("dtype") == dtype)

    @property
    def video_keys(self) -> list[str]:
        return self._keys_of("video")

    @property
    def audio_keys(self) -> list[str]:
        return self._keys_of("audio")

    @property
    def column_features(self) -> list[str]:
        """Features stored as data columns: everything but videos (mp4) and DoRobot audio (wav)."""
        return [k for k, f in self.features.items()
                if not (isinstance(f, dict) and f.get("dtype") in ("video", "audio"))]

    def template(self, key: str, default: str) -> str:
        value = self.info.get(key)
        return value if isinstance(value, str) else default

    def file_path(self, key: str, default: str, **fields) -> str:
        """A dataset-relative file path from an info.json template (e.g. data_path)."""
        return self.template(key, default).format(**fields)

    # --- files --------------------------------------------------------------------------
    def rel(self, path: Path | str) -> str:
        path = Path(path)
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def data_files(self) -> list[Path]:
        """Data files in the order LeRobot's reader concatenates them (sorted paths, notes §5.3)."""
        return sorted(self.root.glob("data/*/*.parquet"))

    def episodes_files(self) -> list[Path]:
        return sorted(self.root.glob("meta/episodes/*/*.parquet"))

    def has_episodes(self) -> bool:
        return self.pending_episodes is not None or bool(self.episodes_files())

    # --- DuckDB -------------------------------------------------------------------------
    def connect(self, *, data: bool = False, episodes: bool = False, tasks: bool = False) -> duckdb.DuckDBPyConnection:
        """A cursor on the view's DuckDB database holding the requested relations, each built on
        first request and kept for the other checks. Closing the cursor leaves them in place.

        ``data``: every data row plus ``row_pos`` (global row position in reader order),
        ``data_file`` (dataset-relative path), ``_file`` and ``file_row_number``; ``data_full``:
        the same (the name stats checks use for list features). ``episodes``: meta/episodes rows
        plus ``ep_row``.
        ``tasks``: ``task_index``, ``task`` (the string, wherever the file keeps it), ``row_pos``.
        Raises :class:`MissingInput` when a requested file is absent.
        """
        if self._db is None:
            self._db, self._schema = _new_schema()
        for name, wanted, build in (("data", data, self._register_data), ("episodes", episodes, self._register_episodes),
                                    ("tasks", tasks, self._register_tasks)):
            if wanted and name not in self._built:
                build(self._db)
                self._built.add(name)
        cursor = self._db.cursor()
        cursor.execute(f"SET schema = '{self._schema}'")
        return cursor

    def close(self) -> None:
        """Drop what the view built in DuckDB (the view can still be used: it is rebuilt on demand)."""
        if self._db is not None:
            try:
                self._db.execute(f"DROP SCHEMA {self._schema} CASCADE")
            finally:
                self._db.close()
        self._db = None
        self._built.clear()
        self._memo.clear()

    def memo(self, key: str, compute: Callable[[], object]):
        """``compute()`` once per view: for inputs several checks derive alike (episode stats)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def _positions(self, con, files: list[Path]) -> pa.Table:
        rows = dict(con.execute(
            f"SELECT file_name, num_rows FROM parquet_file_metadata({_sql_list(files)})"
        ).fetchall())
        first, offsets, counts = 0, [], []
        for f in files:
            n = int(rows[str(f)])
            offsets.append(first)
            counts.append(n)
            first += n
        return pa.table({
            "file_pos": int64_array(range(len(files))),
            "path": string_array([str(f) for f in files]),
            "rel_path": string_array([self.rel(f) for f in files]),
            "first_row": int64_array(offsets),
            "num_rows": int64_array(counts),
        })

    @staticmethod
    def _create_table(con, name: str, table: pa.Table) -> None:
        """An Arrow table as a real table of the database, so that every cursor sees it
        (a registered Arrow table is visible to its own connection only)."""
        con.register("_arrow_in", table)
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM _arrow_in")
        con.unregister("_arrow_in")

    def _register_data(self, con) -> None:
        files = self.data_files()
        if not files:
            raise MissingInput("data/*/*.parquet")
        self._create_table(con, "data_files", self._positions(con, files))
        # A view, read from the files by each query: keeping the rows in a table made the
        # checks faster but cost ~90 MiB at 2000 episodes, a third of the memory budget;
        # a scan of the few scalar columns a check reads is a fraction of a second.
        # data_scan: the rows exactly as the reader yields them (files in path order, one DuckDB
        # thread), for the checks that follow reader order with a streaming window (OVER ()),
        # which holds no rows; an ORDER BY row_pos window sorted all of them (+30 MiB at 2000 episodes).
        con.execute(f"""
            CREATE VIEW data_scan AS
            SELECT * FROM read_parquet({_sql_list(files)}, filename='_file', file_row_number=true, union_by_name=true)
        """)
        con.execute("""
            CREATE VIEW data AS
            SELECT d.*, f.first_row + d.file_row_number AS row_pos, f.rel_path AS data_file
            FROM data_scan d JOIN data_files f ON d._file = f.path
        """)
        con.execute("CREATE VIEW data_full AS SELECT * FROM data")

    def _register_episodes(self, con) -> None:
        if self.pending_episodes is not None:
            table = self.pending_episodes
            rows = int64_array(range(table.num_rows))
            self._create_table(con, "episodes", table.append_column("ep_row", rows))
            return
        files = self.episodes_files()
        if not files:
            raise MissingInput("meta/episodes/*/*.parquet")
        self._create_table(con, "episodes_files", self._positions(con, files))
        # A view: the stats columns make a table of it ~20 MiB at 2000 episodes, and reading the
        # one small file again per check costs milliseconds.
        con.execute(f"""
            CREATE VIEW episodes AS
            SELECT e.* EXCLUDE (_file, file_row_number), f.first_row + e.file_row_number AS ep_row
            FROM read_parquet({_sql_list(files)}, filename='_file', file_row_number=true, union_by_name=true) e
            JOIN episodes_files f ON e._file = f.path
        """)

    def tasks_column(self, con) -> str:
        """The column holding the task strings: the pandas index column (LeRobot HEAD names it
        ``task``, v0.4.4 leaves it ``__index_level_0__``)."""
        meta = pandas_metadata(con, self.root / TASKS_PATH)
        names = [r[0] for r in con.execute(
            f"SELECT name FROM parquet_schema({_sql_str(self.root / TASKS_PATH)})"
        ).fetchall()]
        index_columns = (meta or {}).get("index_columns") or []
        for candidate in [c for c in index_columns if isinstance(c, str)] + ["task", "__index_level_0__"]:
            if candidate in names and candidate != "task_index":
                return candidate
        raise ValueError(f"{TASKS_PATH} has no task string column (columns: {names[1:]})")

    def _register_tasks(self, con) -> None:
        path = self.root / TASKS_PATH
        if not path.is_file():
            raise MissingInput(TASKS_PATH)
        column = self.tasks_column(con)
        con.execute(f"""
            CREATE VIEW tasks AS
            SELECT task_index, {q(column)} AS task, file_row_number AS row_pos
            FROM read_parquet({_sql_str(path)}, file_row_number=true)
        """)

    def columns(self, con, relation: str) -> list[str]:
        return [r[0] for r in con.execute(f"DESCRIBE {relation}").fetchall()]


def pandas_metadata(con, path: Path) -> dict | None:
    rows = con.execute(f"SELECT key, value FROM parquet_kv_metadata({_sql_str(path)})").fetchall()
    for key, value in rows:
        if bytes(key) == b"pandas":
            try:
                return json.loads(bytes(value).decode("utf-8"))
            except ValueError:
                return None
    return None


@dataclass(frozen=True)
class CheckSpec:
    name: str
    asset: str  # the asset (artifact) the check inspects: tasks, data, videos, audio, episodes, dataset_stats, info
    severity: str
    fn: Callable[[DatasetView], CheckResult]
    description: str
    deep: bool = False  # expensive (decodes media): only with `validate --deep`, not in conversions
    needs: tuple[str, ...] = ()  # other assets whose output the check reads (Dagster waits for them)


CHECKS: list[CheckSpec] = []


def check(name: str, asset: str, severity: str, description: str, *, deep: bool = False, needs: tuple[str, ...] = ()):
    """Register a check function."""
    if severity not in (ERROR, WARNING):
        raise ValueError(f"check {name!r}: severity must be {ERROR!r} or {WARNING!r}, got {severity!r}")

    def wrap(fn: Callable[[DatasetView], CheckResult]):
        spec = CheckSpec(name=name, asset=asset, severity=severity, fn=fn, description=description,
                         deep=deep, needs=tuple(needs))
        for i, other in enumerate(CHECKS):
            if other.name != name:
                continue
            if (other.fn.__module__, other.fn.__qualname__) == (fn.__module__, fn.__qualname__):
                CHECKS[i] = spec  # the same function registered again (module reloaded)
                return fn
            raise ValueError(
                f"check name {name!r} is taken by {other.fn.__module__}.{other.fn.__qualname__}; "
                f"{fn.__module__}.{fn.__qualname__} needs another name"
            )
        CHECKS.append(spec)
        return fn

    return wrap


def registered_checks() -> list[CheckSpec]:
    """Every check: this module's plus those of :data:`CHECK_MODULES` that exist."""
    for module in CHECK_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise  # the module exists but something it imports does not: a real error
    return list(CHECKS)


def find_check(name: str) -> CheckSpec:
    for spec in registered_checks():
        if spec.name == name:
            return spec
    raise KeyError(f"no check named {name!r}")


def run_check(spec: CheckSpec | str, view: DatasetView) -> CheckResult:
    """Run one check; a missing input or an unexpected exception is a failure naming it."""
    if isinstance(spec, str):
        spec = find_check(spec)
    try:
        result = spec.fn(view)
    except MissingInput as e:
        result = failed(f"{e.relative} is missing", offending=[{"missing": e.relative}])
    except Exception as e:  # a check must report, not crash the validation of other checks
        result = failed(f"could not check: {type(e).__name__}: {e}")
    return dataclasses.replace(result, name=spec.name, severity=spec.severity, asset=spec.asset)


def run_checks(view: DatasetView, *, deep: bool = False, assets: Iterable[str] | None = None) -> list[CheckResult]:
    wanted = set(assets) if assets is not None else None
    results = []
    for spec in registered_checks():
        if wanted is not None and spec.asset not in wanted:
            continue
        if spec.deep and not deep:
            results.append(CheckResult(spec.name, True, spec.severity, "not run: a deep check (validate --deep)",
                                       applicable=False, asset=spec.asset))
            continue
        results.append(run_check(spec, view))
    return results


def validate_dataset(root: Path | str, *, deep: bool = False) -> list[CheckResult]:
    """Every registered check on the v3.0 dataset at ``root``."""
    return run_checks(DatasetView.open(root), deep=deep)


def is_valid(results: Iterable[CheckResult]) -> bool:
    return not any(r.is_error for r in results)


# --- result helpers (name, severity and asset are filled in by run_check) ---------------------

def passed(description: str, counts: dict | None = None) -> CheckResult:
    return CheckResult("", True, "", description, counts=dict(counts or {}))


def failed(description: str, counts: dict | None = None, offending: list[dict] | None = None) -> CheckResult:
    return CheckResult("", False, "", description, counts=dict(counts or {}),
                       offending=list(offending or [])[:MAX_OFFENDING])


def not_applicable(description: str) -> CheckResult:
    return CheckResult("", True, "", description, applicable=False)


# --- helpers shared with audio_checks.py and stats_checks.py ----------------------------------

def short_list(items: list[str], most: int) -> str:
    """The first ``most`` items, comma-separated, with " ..." when there are more (for descriptions)."""
    return ", ".join(items[:most]) + (" ..." if len(items) > most else "")


def read_json_object(path: Path, name: str) -> dict:
    """A JSON file whose top level must be an object; ``name`` is how the error names the file."""
    value = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"{name} is not a JSON object")
    return value


def episode_stats_columns(view: DatasetView, con) -> dict[str, tuple[str, str]]:
    """The per-episode stats columns of the episodes table, in table order, each with its
    (feature, stat): ``stats/<feature>/<stat>``, where the feature name may itself contain '/'."""
    found: dict[str, tuple[str, str]] = {}
    for column in view.columns(con, "episodes"):
        if column.startswith(STATS_PREFIX):
            feature, _, stat = column[len(STATS_PREFIX):].rpartition("/")
            found[column] = (feature, stat)
    return found


def _plain(value):
    """JSON-friendly scalars for offending rows."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return round(float(value), 9)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _plain_rows(rows: list[dict]) -> list[dict]:
    """Offending rows built in Python, with JSON-friendly values."""
    return [{k: _plain(v) for k, v in row.items()} for row in rows]


def _rows(cursor_rows: list[tuple], names: list[str]) -> list[dict]:
    return [{n: _plain(v) for n, v in zip(names, row)} for row in cursor_rows[:MAX_OFFENDING]]


def _query(con, sql: str, params: list | None = None) -> tuple[list[tuple], list[str]]:
    cur = con.execute(sql, params or [])
    return cur.fetchall(), [d[0] for d in cur.description]


@dataclass
class _Offending:
    """What :func:`_count_offending` found."""

    total: int  # rows of the relation checked
    count: int  # offending rows in all
    rows: list[tuple]  # the first MAX_OFFENDING of them, as DuckDB returns them (the messages format these)
    names: list[str]  # their column names

    def as_dicts(self) -> list[dict]:
        """The offending rows a CheckResult keeps."""
        return _rows(self.rows, self.names)


def _count_offending(con, relation: str, offending_sql: str) -> _Offending:
    """Count the rows of ``relation`` and the rows ``offending_sql`` selects, and fetch the first
    MAX_OFFENDING of the latter (``offending_sql`` ends with its ORDER BY). DuckDB counts and the
    fetch is limited, so millions of bad data rows never reach Python."""
    total = con.execute(f"SELECT count(*) FROM {relation}").fetchone()[0]
    count = con.execute(f"SELECT count(*) FROM ({offending_sql})").fetchone()[0]
    rows, names = _query(con, f"{offending_sql} LIMIT {MAX_OFFENDING}") if count else ([], [])
    return _Offending(total, count, rows, names)


# === tasks ====================================================================================

@check("tasks_index", "tasks", ERROR,
       "meta/tasks.parquet rows are in task_index order 0..T-1 (LeRobot resolves a task by row position).")
def tasks_index(view: DatasetView) -> CheckResult:
    con = view.connect(tasks=True)
    found = _count_offending(con, "tasks", """
        SELECT row_pos AS row, task_index, row_pos AS expected, task FROM tasks
        WHERE task_index IS DISTINCT FROM row_pos ORDER BY row_pos""")
    n = found.total
    counts = {"tasks": n, "offending_rows": found.count}
    if found.count:
        r = found.rows[0]
        return failed(f"{found.count} of {n} task rows are out of task_index order; row {r[0]} has "
                      f"task_index {r[1]}, expected {r[2]}", counts, found.as_dicts())
    return passed(f"{n} tasks with task_index 0..{n - 1} in row order", counts)


@check("tasks_unique", "tasks", ERROR, "Task strings in meta/tasks.parquet are present and unique.")
def tasks_unique(view: DatasetView) -> CheckResult:
    con = view.connect(tasks=True)
    found = _count_offending(con, "tasks", """
        SELECT task, count(*) AS rows, list(task_index ORDER BY task_index) AS task_indices FROM tasks
        GROUP BY task HAVING count(*) > 1 OR task IS NULL OR task = '' ORDER BY min(row_pos)""")
    n = found.total
    counts = {"tasks": n, "offending_tasks": found.count}
    if found.count:
        r = found.rows[0]
        what = "empty or missing" if not r[0] else "duplicated"
        return failed(f"{found.count} task strings are duplicated or empty; {r[0]!r} is {what} "
                      f"(task_index {r[2]})", counts, found.as_dicts())
    return passed(f"{n} distinct task strings", counts)


@check("tasks_pandas_index", "tasks", ERROR,
       "meta/tasks.parquet carries pandas metadata whose index column holds the task strings; "
       "without it pandas reads a RangeIndex and LeRobot returns integers instead of tasks.")
def tasks_pandas_index(view: DatasetView) -> CheckResult:
    path = view.root / TASKS_PATH
    if not path.is_file():
        raise MissingInput(TASKS_PATH)
    con = view.connect()
    meta = pandas_metadata(con, path)
    columns = {r[0]: r[1] for r in con.execute(f"SELECT name, type FROM parquet_schema({_sql_str(path)})").fetchall()}
    if meta is None:
        return failed(f"{TASKS_PATH} has no pandas metadata: pandas reads back a RangeIndex instead of the tasks",
                      offending=[{"file": TASKS_PATH, "pandas_metadata": None}])
    index_columns = meta.get("index_columns") or []
    named = [c for c in index_columns if isinstance(c, str)]
    if not named:
        return failed(f"{TASKS_PATH}: the pandas index is {index_columns!r}, not a column of task strings",
                      offending=[{"file": TASKS_PATH, "index_columns": json.dumps(index_columns)}])
    if named[0] not in columns or columns[named[0]] not in ("BYTE_ARRAY", "VARCHAR"):
        return failed(f"{TASKS_PATH}: pandas index column {named[0]!r} is not a string column of the file",
                      offending=[{"file": TASKS_PATH, "index_column": named[0]}])
    return passed(f"task strings are the pandas index (column {named[0]!r})")


# === data =====================================================================================

def _require_columns(view, con, relation: str, wanted: list[str]) -> list[str]:
    have = set(view.columns(con, relation))
    return [c for c in wanted if c not in have]


def _no_data_column(column: str) -> CheckResult:
    """The failure of a check whose column the data files lack altogether."""
    return failed(f"the data files have no {column} column", offending=[{"missing_column": column}])


@check("data_index", "data", ERROR,
       "Column index equals the global row position (0..N-1 over the data files in path order); "
       "LeRobot uses it as an absolute row number.")
def data_index(view: DatasetView) -> CheckResult:
    con = view.connect(data=True)
    if _require_columns(view, con, "data", ["index"]):
        return _no_data_column("index")
    found = _count_offending(con, "data", """
        SELECT row_pos, data_file, file_row_number AS file_row, "index", episode_index FROM data
        WHERE "index" IS DISTINCT FROM row_pos ORDER BY row_pos""")
    n, bad = found.total, found.count
    counts = {"rows": n, "offending_rows": bad}
    if bad:
        r = found.rows[0]
        return failed(f"{bad} of {n} rows have index different from their global row position; "
                      f"first: row {r[0]} ({r[1]} row {r[2]}) has index {r[3]}", counts, found.as_dicts())
    return passed(f"index equals the row position on all {n} rows", counts)


@check("data_episode_order", "data", ERROR,
       "episode_index never decreases in reader order, so each episode's rows are contiguous.")
def data_episode_order(view: DatasetView) -> CheckResult:
    con = view.connect(data=True)
    if _require_columns(view, con, "data", ["episode_index"]):
        return _no_data_column("episode_index")
    found = _count_offending(con, "data", """
        SELECT f.first_row + o.file_row_number AS row_pos, f.rel_path AS data_file, o.file_row_number AS file_row,
               o.previous_episode, o.episode_index
        FROM (SELECT _file, file_row_number, episode_index, lag(episode_index) OVER () AS previous_episode
              FROM data_scan) o
        JOIN data_files f ON o._file = f.path
        WHERE o.episode_index < o.previous_episode OR o.episode_index IS NULL ORDER BY row_pos""")
    n, bad = found.total, found.count
    counts = {"rows": n, "offending_rows": bad}
    if bad:
        r = found.rows[0]
        return failed(f"episode_index decreases at {bad} rows; first: row {r[0]} ({r[1]} row {r[2]}) has "
                      f"episode {r[4]} after episode {r[3]}", counts, found.as_dicts())
    return passed(f"episode_index is non-decreasing over {n} rows", counts)


@check("data_frame_index", "data", ERROR,
       "frame_index starts at 0 and counts up by one within every episode.")
def data_frame_index(view: DatasetView) -> CheckResult:
    con = view.connect(data=True)
    missing = _require_columns(view, con, "data", ["frame_index", "episode_index"])
    if "episode_index" in missing:
        return _no_data_column("episode_index")
    if missing:
        return not_applicable("the data has no frame_index column (declared features decide; see data_columns)")
    found = _count_offending(con, "data", """
        SELECT row_pos, data_file, d.episode_index, frame_index, row_pos - first_row AS expected
        FROM data d JOIN (SELECT episode_index, min(row_pos) AS first_row FROM data GROUP BY episode_index) e
             ON d.episode_index IS NOT DISTINCT FROM e.episode_index
        WHERE frame_index IS DISTINCT FROM row_pos - first_row ORDER BY row_pos""")
    n, bad = found.total, found.count
    counts = {"rows": n, "offending_rows": bad}
    if bad:
        r = found.rows[0]
        return failed(f"{bad} rows break the 0,1,2,... frame_index sequence of their episode; first: row {r[0]} "
                      f"(episode {r[2]}) has frame_index {r[3]}, expected {r[4]}", counts, found.as_dicts())
    return passed(f"frame_index runs 0..length-1 in every episode ({n} rows)", counts)


@check("data_timestamps", "data", WARNING,
       f"timestamp equals frame_index / fps within {PTS_TOLERANCE_S} s (the video lookup adds it "
       "to the episode's from_timestamp).")
def data_timestamps(view: DatasetView) -> CheckResult:
    con = view.connect(data=True)
    if _require_columns(view, con, "data", ["timestamp", "frame_index"]):
        return not_applicable("the data has no timestamp or no frame_index column")
    fps = view.fps
    found = _count_offending(con, "data", f"""
        SELECT row_pos, data_file, episode_index, frame_index, timestamp, frame_index / {fps!r} AS expected
        FROM data WHERE abs(timestamp - frame_index / {fps!r}) > {PTS_TOLERANCE_S!r} OR timestamp IS NULL
        ORDER BY row_pos""")
    n, bad = found.total, found.count
    counts = {"rows": n, "offending_rows": bad}
    if bad:
        r = found.rows[0]
        return failed(f"{bad} of {n} rows have timestamp off frame_index / fps by more than {PTS_TOLERANCE_S} s; "
                      f"first: row {r[0]} (episode {r[2]}, frame {r[3]}) has {r[4]:.6f} s, expected {r[5]:.6f} s",
                      counts, found.as_dicts())
    return passed(f"timestamp = frame_index / {fps:g} on all {n} rows", counts)


@check("data_task_index", "data", ERROR, "Every task_index in the data exists in meta/tasks.parquet.",
       needs=("tasks",))
def data_task_index(view: DatasetView) -> CheckResult:
    con = view.connect(data=True, tasks=True)
    if _require_columns(view, con, "data", ["task_index"]):
        return _no_data_column("task_index")
    rows, names = _query(con, """
        SELECT d.task_index, count(*) AS rows, min(d.row_pos) AS first_row, min(d.episode_index) AS first_episode
        FROM data d ANTI JOIN tasks t ON d.task_index = t.task_index
        GROUP BY d.task_index ORDER BY first_row""")
    n = con.execute("SELECT count(*) FROM data").fetchone()[0]
    tasks_n = con.execute("SELECT count(*) FROM tasks").fetchone()[0]
    bad = sum(r[1] for r in rows)
    counts = {"rows": n, "tasks": tasks_n, "offending_rows": bad}
    if rows:
        unknown = ", ".join(str(r[0]) for r in rows[:MAX_OFFENDING])
        return failed(f"{bad} rows use task_index values missing from {TASKS_PATH} ({tasks_n} tasks): {unknown}; "
                      f"first at row {rows[0][2]} (episode {rows[0][3]})", counts, _rows(rows, names))
    return passed(f"all {n} rows refer to one of the {tasks_n} tasks", counts)


@check("data_columns", "data", ERROR,
       "Every data file's columns are exactly the features of info.json that are not video or audio "
       "(LeRobot's reader fails on an undeclared column and on a missing one).")
def data_columns(view: DatasetView) -> CheckResult:
    files = view.data_files()
    if not files:
        raise MissingInput("data/*/*.parquet")
    expected = view.column_features
    con = view.connect()
    offending = []
    for f in files:
        # parquet_schema lists nested children too; the top-level columns come from DESCRIBE.
        top = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({_sql_str(f)})").fetchall()]
        missing = [c for c in expected if c not in top]
        extra = [c for c in top if c not in expected]
        if missing or extra:
            offending.append({"file": view.rel(f), "missing": ", ".join(missing), "undeclared": ", ".join(extra)})
    counts = {"files": len(files), "features": len(expected), "offending_files": len(offending)}
    if offending:
        o = offending[0]
        parts = [f"missing {o['missing']}" if o["missing"] else "",
                 f"undeclared {o['undeclared']}" if o["undeclared"] else ""]
        return failed(f"{len(offending)} of {len(files)} data files do not have exactly the declared columns; "
                      f"{o['file']}: " + "; ".join(p for p in parts if p), counts, offending)
    return passed(f"{len(files)} data files hold exactly the {len(expected)} declared columns", counts)


def _size_result(kind: str, files: list[dict], limit: float) -> CheckResult:
    """The verdict of the data, video and audio file size checks. ``files``: one dict per file with
    ``file``, ``megabytes`` and ``episodes``. A single-episode file may exceed ``limit``: episodes are
    never split across files (lib/rollover.py)."""
    bad = [f for f in files if f["megabytes"] > limit and f["episodes"] > 1]
    counts = {"files": len(files), "offending_files": len(bad)}
    if bad:
        b = bad[0]
        return failed(f"{len(bad)} {kind} files exceed the {limit:g} MB limit with more than one episode; "
                      f"{b['file']}: {b['megabytes']:.3f} MB, {b['episodes']} episodes", counts, _plain_rows(bad))
    return passed(f"{len(files)} {kind} files within {limit:g} MB (or single-episode)", counts)


@check("data_file_size", "data", WARNING,
       "A data file holding more than one episode stays under data_files_size_in_mb, measured as "
       "LeRobot does (uncompressed column chunks).")
def data_file_size(view: DatasetView) -> CheckResult:
    limit = float(view.info.get("data_files_size_in_mb") or DEFAULT_DATA_FILE_SIZE_MB)
    con = view.connect(data=True)
    rows, names = _query(con, f"""
        WITH sizes AS (
            SELECT file_name, sum(total_uncompressed_size) / {MB} AS megabytes
            FROM parquet_metadata({_sql_list(view.data_files())}) GROUP BY file_name),
        eps AS (SELECT _file, any_value(data_file) AS file, count(DISTINCT episode_index) AS episodes
                FROM data GROUP BY _file)
        SELECT e.file, round(s.megabytes, 6) AS megabytes, e.episodes FROM eps e JOIN sizes s ON s.file_name = e._file
        ORDER BY e.file""")
    return _size_result("data", [dict(zip(names, r)) for r in rows], limit)


# === episodes =================================================================================

@check("episodes_index", "episodes", ERROR,
       "meta/episodes rows are sorted and contiguous: row i is episode i (LeRobot indexes them by position).")
def episodes_index(view: DatasetView) -> CheckResult:
    con = view.connect(episodes=True)
    found = _count_offending(con, "episodes", """
        SELECT ep_row AS row, episode_index, ep_row AS expected FROM episodes
        WHERE episode_index IS DISTINCT FROM ep_row ORDER BY ep_row""")
    n = found.total
    counts = {"episodes": n, "offending_rows": found.count}
    if found.count:
        r = found.rows[0]
        return failed(f"{found.count} of {n} episode rows are out of order; row {r[0]} holds episode {r[1]}, "
                      f"expected {r[2]}", counts, found.as_dicts())
    return passed(f"{n} episodes 0..{n - 1} in order", counts)


@check("episodes_data_rows", "episodes", ERROR,
       "dataset_from_index/dataset_to_index of every episode are exactly the data rows holding "
       "that episode, and every episode in the data has a row in meta/episodes.")
def episodes_data_rows(view: DatasetView) -> CheckResult:
    con = view.connect(data=True, episodes=True)
    found = _count_offending(con, "episodes", """
        WITH d AS (SELECT episode_index, count(*) AS rows, min(row_pos) AS first_row, max(row_pos) + 1 AS end_row
                   FROM data GROUP BY episode_index)
        SELECT coalesce(e.episode_index, d.episode_index) AS episode_index,
               e.dataset_from_index, e.dataset_to_index, d.first_row AS data_from, d.end_row AS data_to,
               d.rows AS data_rows
        FROM episodes e FULL OUTER JOIN d ON e.episode_index = d.episode_index
        WHERE e.episode_index IS NULL OR d.episode_index IS NULL
           OR e.dataset_from_index IS DISTINCT FROM d.first_row OR e.dataset_to_index IS DISTINCT FROM d.end_row
           OR d.rows <> d.end_row - d.first_row
        ORDER BY 1""")
    n = found.total
    counts = {"episodes": n, "offending_episodes": found.count}
    if found.count:
        r = dict(zip(found.names, found.rows[0]))
        if r["dataset_from_index"] is None:
            why = f"episode {r['episode_index']} has {r['data_rows']} data rows but no row in meta/episodes"
        elif r["data_rows"] is None:
            why = (f"episode {r['episode_index']} has no data rows "
                   f"(meta/episodes says {r['dataset_from_index']}..{r['dataset_to_index']})")
        else:
            why = (f"episode {r['episode_index']} claims rows {r['dataset_from_index']}..{r['dataset_to_index']}, "
                   f"the data has {r['data_rows']} rows in {r['data_from']}..{r['data_to']}")
        return failed(f"{found.count} episodes disagree with the data rows; {why}", counts, found.as_dicts())
    return passed(f"{n} episodes match their data row ranges", counts)


@check("episodes_length", "episodes", ERROR, "length equals dataset_to_index - dataset_from_index.")
def episodes_length(view: DatasetView) -> CheckResult:
    con = view.connect(episodes=True)
    found = _count_offending(con, "episodes", """
        SELECT episode_index, length, dataset_from_index, dataset_to_index,
               dataset_to_index - dataset_from_index AS expected FROM episodes
        WHERE length IS DISTINCT FROM dataset_to_index - dataset_from_index ORDER BY ep_row""")
    n = found.total
    counts = {"episodes": n, "offending_episodes": found.count}
    if found.count:
        r = found.rows[0]
        return failed(f"{found.count} episodes have length != dataset_to_index - dataset_from_index; episode {r[0]} "
                      f"has length {r[1]}, its rows {r[2]}..{r[3]} make {r[4]}", counts, found.as_dicts())
    return passed(f"{n} episode lengths match their row ranges", counts)


def _expected_data_files(view: DatasetView, con) -> pa.Table:
    eps = con.execute(
        'SELECT episode_index, "data/chunk_index", "data/file_index" FROM episodes ORDER BY ep_row').fetchall()
    return pa.table({
        "episode_index": int64_array([e for e, _, _ in eps]),
        "expected_file": string_array(
            [view.file_path("data_path", DATA_PATH, chunk_index=c, file_index=f) for _, c, f in eps]),
    })


@check("episodes_data_file", "episodes", ERROR,
       "The data file named by data/chunk_index and data/file_index holds all of the episode's "
       "rows (dataset_to_index - dataset_from_index of them), and no other file holds any.")
def episodes_data_file(view: DatasetView) -> CheckResult:
    con = view.connect(data=True, episodes=True)
    con.register("expected", _expected_data_files(view, con))
    found = _count_offending(con, "episodes", """
        WITH d AS (SELECT episode_index, data_file, count(*) AS rows FROM data GROUP BY ALL),
        found AS (SELECT x.episode_index, x.expected_file,
                         coalesce(sum(d.rows) FILTER (WHERE d.data_file = x.expected_file), 0) AS rows_in_file,
                         string_agg(d.data_file, ', ' ORDER BY d.data_file)
                             FILTER (WHERE d.data_file <> x.expected_file) AS other_files
                  FROM expected x LEFT JOIN d ON d.episode_index = x.episode_index GROUP BY ALL)
        SELECT f.episode_index, f.expected_file, f.rows_in_file,
               e.dataset_to_index - e.dataset_from_index AS expected_rows, f.other_files
        FROM found f JOIN episodes e USING (episode_index)
        WHERE f.rows_in_file <> e.dataset_to_index - e.dataset_from_index OR f.other_files IS NOT NULL
        ORDER BY 1""")
    n = found.total
    counts = {"episodes": n, "offending_episodes": found.count}
    if found.count:
        r = found.rows[0]
        where = f"; its rows are in {r[4]}" if r[4] else ""
        return failed(f"{found.count} episodes are not (all) in their data file; episode {r[0]}: {r[1]} holds "
                      f"{r[2]} of its {r[3]} rows{where}", counts, found.as_dicts())
    return passed(f"{n} episodes lie wholly in the data file they name", counts)


def _file_columns(kind: str, key: str = "") -> tuple[str, str]:
    """The meta/episodes columns naming the file that holds an episode's rows (``data/chunk_index``,
    ``data/file_index``; key "") or one camera's or microphone's media (``videos/<key>/...``)."""
    prefix = f"{kind}/{key}/" if key else f"{kind}/"
    return prefix + "chunk_index", prefix + "file_index"


def _placement_columns(kind: str, key: str) -> list[str]:
    """A camera's or microphone's file columns and the episode's from/to timestamps in that file."""
    return [*_file_columns(kind, key), f"{kind}/{key}/from_timestamp", f"{kind}/{key}/to_timestamp"]


@check("episodes_files_exist", "episodes", ERROR,
       "Every data, video and audio file that meta/episodes refers to exists.")
def episodes_files_exist(view: DatasetView) -> CheckResult:
    con = view.connect(episodes=True)
    columns = set(view.columns(con, "episodes"))
    refs: list[tuple[str, str, str, str]] = []  # (kind, key, template key, default template)
    refs.append(("data", "", "data_path", DATA_PATH))
    refs += [("videos", k, "video_path", VIDEO_PATH) for k in view.video_keys]
    refs += [("audio", k, "audio_path", AUDIO_PATH) for k in view.audio_keys]
    offending: list[dict] = []
    missing_files: set[str] = set()
    referenced: set[str] = set()
    for kind, key, template_key, default in refs:
        chunk_col, file_col = _file_columns(kind, key)
        if chunk_col not in columns or file_col not in columns:
            offending.append({"kind": kind, "key": key, "episode_index": None,
                              "path": f"columns {chunk_col}, {file_col} are missing"})
            missing_files.add(chunk_col)
            continue
        placed = con.execute(
            f"SELECT DISTINCT {q(chunk_col)}, {q(file_col)}, min(episode_index) FROM episodes "
            f"WHERE {q(file_col)} IS NOT NULL GROUP BY ALL ORDER BY 1, 2").fetchall()
        for chunk, file_, first_episode in placed:
            fields = {"chunk_index": int(chunk), "file_index": int(file_)}
            if kind == "videos":
                fields["video_key"] = key
            elif kind == "audio":
                fields["audio_key"] = key
            rel = view.file_path(template_key, default, **fields)
            referenced.add(rel)
            if not resolve_inside(view.root, rel).is_file():
                missing_files.add(rel)
                offending.append({"kind": kind, "key": key, "episode_index": first_episode, "path": rel})
    counts = {"referenced_files": len(referenced), "missing": len(missing_files)}
    if offending:
        o = offending[0]
        who = f" (first referenced by episode {o['episode_index']})" if o["episode_index"] is not None else ""
        return failed(f"{len(missing_files)} referenced files are missing; {o['path']}{who}", counts, offending)
    return passed(f"all {len(referenced)} referenced files exist", counts)


# === videos ===================================================================================

@dataclass(frozen=True, slots=True)  # slots: one per episode and camera
class VideoPlacement:
    """One episode's placement in one camera's files, as meta/episodes has it."""

    episode_index: int
    length: int
    chunk_index: int | None
    file_index: int | None
    from_timestamp: float | None
    to_timestamp: float | None


def _video_placements(view: DatasetView, con, key: str) -> list[VideoPlacement] | None:
    cols = _placement_columns("videos", key)
    present = set(view.columns(con, "episodes"))  # once, not once per column
    if any(c not in present for c in cols):
        return None
    sql = (f"SELECT episode_index, length, {', '.join(q(c) for c in cols)} FROM episodes ORDER BY ep_row")
    return [VideoPlacement(*row) for row in con.execute(sql).fetchall()]


def _open_video(view: DatasetView, key: str, chunk: int, file_: int) -> tuple[str, Path]:
    rel = view.file_path("video_path", VIDEO_PATH, video_key=key, chunk_index=chunk, file_index=file_)
    return rel, resolve_inside(view.root, rel)


class TruncatedVideo(Exception):
    """An mp4 whose index names samples beyond the end of the file."""

    def __init__(self, samples: int, inside: int):
        self.samples, self.inside = samples, inside
        super().__init__(f"file truncated: {samples - inside} of {samples} frames lie beyond its end")


def video_packet_times(path: Path) -> np.ndarray:
    """Presentation times (s) of the first video stream's packets, sorted, as FFmpeg demuxes them.

    They come from the mp4's sample tables (lib/mp4.py reads the index, not the frames); a file
    whose tables lib/mp4.py cannot turn into FFmpeg's packets exactly is demuxed with PyAV.
    Raises :class:`TruncatedVideo` when the index names samples beyond the end of the file.
    """
    try:
        times, _, samples, inside = mp4.presentation_times(path)
    except (mp4.Mp4Error, OSError):
        return demuxed_packet_times(path)
    if inside < samples:
        raise TruncatedVideo(samples, inside)
    return times


def demuxed_packet_times(path: Path) -> np.ndarray:
    """:func:`video_packet_times` by demuxing every packet with PyAV (not decoding)."""
    import av  # only for files lib/mp4.py does not model, and deep checks

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        pts = [p.pts for p in container.demux(stream) if p.pts is not None]
    return np.sort(np.asarray(pts, dtype=np.float64) * float(tb))


def video_frame_times(path: Path) -> np.ndarray:
    """Presentation times (s) of every decoded frame of the first video stream, sorted."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base)
        times = [frame.pts * tb for frame in container.decode(stream) if frame.pts is not None]
    return np.sort(np.asarray(times, dtype=np.float64))


@check("video_timestamps", "videos", ERROR,
       "Per camera and episode, to_timestamp - from_timestamp equals length / fps within one frame "
       "period, with 0 <= from_timestamp.")
def video_timestamps(view: DatasetView) -> CheckResult:
    keys = view.video_keys
    if not keys:
        return not_applicable("the dataset has no video features")
    fps = view.fps
    con = view.connect(episodes=True)
    offending, checked = [], 0
    for key in keys:
        placed = _video_placements(view, con, key)
        if placed is None:
            offending.append({"video_key": key, "episode_index": None, "fault": "placement columns missing"})
            continue
        for p in placed:
            checked += 1
            start, end, length = p.from_timestamp, p.to_timestamp, p.length
            if start is None or end is None:
                offending.append({"video_key": key, "episode_index": p.episode_index, "fault": "no timestamps"})
                continue
            span = end - start
            # Less than one frame period off: a whole frame more or less is a real mismatch.
            if start < 0 or round(abs(span - length / fps) * fps, 6) >= 1:
                offending.append({"video_key": key, "episode_index": p.episode_index, "from_timestamp": start,
                                  "to_timestamp": end, "span_s": span, "expected_s": length / fps})
    counts = {"cameras": len(keys), "episodes_checked": checked, "offending": len(offending)}
    if offending:
        o = offending[0]
        if "span_s" in o:
            why = (f"{o['video_key']} episode {o['episode_index']}: "
                   f"{o['from_timestamp']:.6f}..{o['to_timestamp']:.6f} s "
                   f"spans {o['span_s']:.6f} s, {o['expected_s']:.6f} s expected ({1 / fps:.6f} s per frame)")
        else:
            why = f"{o['video_key']} episode {o['episode_index']}: {o['fault']}"
        return failed(f"{len(offending)} camera episodes have from/to timestamps that do not fit length / fps; {why}",
                      counts, _plain_rows(offending))
    return passed(f"{checked} camera episodes span length / fps", counts)


def _group_by_file(placed: list[VideoPlacement]) -> dict[tuple[int, int], list[VideoPlacement]]:
    groups: dict[tuple[int, int], list[VideoPlacement]] = {}
    for p in placed:
        if p.chunk_index is None or p.file_index is None:
            continue
        groups.setdefault((int(p.chunk_index), int(p.file_index)), []).append(p)
    return groups


def _frames_between(path: Path, members: list[VideoPlacement], half: float) -> list[int]:
    """Per member, the packets of ``path`` presented in [from, to) (each bound lowered by half a
    frame period). The file's times are freed on return, before the next file is read."""
    times = video_packet_times(path)
    lo = np.searchsorted(times, [p.from_timestamp - half for p in members], "left")
    hi = np.searchsorted(times, [p.to_timestamp - half for p in members], "left")
    return (hi - lo).tolist()


@check("video_frame_count", "videos", ERROR,
       "Per camera and episode, the mp4 holds exactly length frames between from_timestamp and "
       "to_timestamp (counted from the packets' presentation times, without decoding).")
def video_frame_count(view: DatasetView) -> CheckResult:
    keys = view.video_keys
    if not keys:
        return not_applicable("the dataset has no video features")
    half = 0.5 / view.fps  # frame times sit on the grid; half a period keeps each at its own side
    con = view.connect(episodes=True)
    offending, checked, files = [], 0, 0
    for key in keys:
        placed = _video_placements(view, con, key)
        if placed is None:
            offending.append({"video_key": key, "episode_index": None, "file": None,
                              "fault": "placement columns missing"})
            continue
        for (chunk, file_), members in _group_by_file(placed).items():
            rel, path = _open_video(view, key, chunk, file_)
            if not path.is_file():
                offending.append({"video_key": key, "episode_index": members[0].episode_index, "file": rel,
                                  "fault": "file missing"})
                continue
            try:
                counted = _frames_between(path, members, half)
            except TruncatedVideo as e:
                offending.append({"video_key": key, "episode_index": members[0].episode_index, "file": rel,
                                  "fault": str(e)})
                continue
            files += 1
            for p, frames in zip(members, counted):
                checked += 1
                if frames != p.length:
                    offending.append({"video_key": key, "episode_index": p.episode_index, "file": rel,
                                      "frames": frames, "length": p.length,
                                      "from_timestamp": p.from_timestamp, "to_timestamp": p.to_timestamp})
    counts = {"cameras": len(keys), "files": files, "episodes_checked": checked, "offending": len(offending)}
    if offending:
        o = offending[0]
        if "frames" in o:
            why = (f"{o['video_key']} episode {o['episode_index']} has {o['frames']} frames in {o['file']} between "
                   f"{o['from_timestamp']:.6f} and {o['to_timestamp']:.6f} s, length is {o['length']}")
        else:
            why = f"{o['video_key']} episode {o['episode_index']}: {o['fault']} {o['file'] or ''}".rstrip()
        return failed(f"{len(offending)} camera episodes have a frame count different from their length; {why}",
                      counts, _plain_rows(offending))
    return passed(f"{checked} camera episodes hold exactly length frames ({files} files)", counts)


@check("video_pts_alignment", "videos", ERROR,
       f"Deep: decodes every frame; for every data row, a frame sits at from_timestamp + timestamp "
       f"within {PTS_TOLERANCE_S} s, which LeRobot's reader asserts.", deep=True)
def video_pts_alignment(view: DatasetView) -> CheckResult:
    keys = view.video_keys
    if not keys:
        return not_applicable("the dataset has no video features")
    con = view.connect(data=True, episodes=True)
    # The frame's position in its episode (not the frame_index column: v2.0 ports may lack it).
    rows = con.execute(
        "SELECT episode_index, row_number() OVER (PARTITION BY episode_index ORDER BY row_pos) - 1 "
        "AS frame_index, timestamp FROM data ORDER BY row_pos"
    ).fetchnumpy()
    ep_col, frame_col, ts_col = rows["episode_index"], rows["frame_index"], rows["timestamp"].astype(np.float64)
    offending, checked, bad_total, unusable = [], 0, 0, 0
    for key in keys:
        placed = _video_placements(view, con, key)
        if placed is None:
            offending.append({"video_key": key, "fault": "placement columns missing"})
            unusable += 1
            continue
        for (chunk, file_), members in _group_by_file(placed).items():
            rel, path = _open_video(view, key, chunk, file_)
            if not path.is_file():
                offending.append({"video_key": key, "file": rel, "fault": "file missing"})
                unusable += 1
                continue
            times = video_frame_times(path)
            for p in members:
                mask = ep_col == p.episode_index
                query = p.from_timestamp + ts_col[mask]
                checked += len(query)
                if not len(times):
                    nearest = np.full_like(query, np.nan)
                else:
                    i = np.clip(np.searchsorted(times, query), 1, max(1, len(times) - 1))
                    left, right = times[i - 1], times[np.minimum(i, len(times) - 1)]
                    nearest = np.where(np.abs(query - left) <= np.abs(query - right), left, right)
                off = ~(np.abs(nearest - query) <= PTS_TOLERANCE_S)
                bad_total += int(off.sum())
                for j in np.flatnonzero(off)[: MAX_OFFENDING - len(offending)]:
                    offending.append({"video_key": key, "episode_index": p.episode_index, "file": rel,
                                      "frame_index": int(frame_col[mask][j]), "query_s": float(query[j]),
                                      "nearest_frame_s": float(nearest[j])})
    counts = {"cameras": len(keys), "frames_checked": checked, "offending_frames": bad_total,
              "unusable_placements": unusable}
    if offending:
        o = offending[0]
        if "query_s" in o:
            why = (f"{o['video_key']} episode {o['episode_index']} frame {o['frame_index']}: requested "
                   f"{o['query_s']:.6f} s, nearest frame at {o['nearest_frame_s']:.6f} s in {o['file']}")
        else:
            why = f"{o['video_key']}: {o['fault']} {o.get('file') or ''}".rstrip()
        return failed(f"{bad_total} frames have no decoded frame within {PTS_TOLERANCE_S} s of from_timestamp + "
                      f"timestamp, {unusable} videos cannot be checked; {why}", counts,
                      _plain_rows(offending))
    return passed(f"{checked} frames align with the decoded video within {PTS_TOLERANCE_S} s", counts)


def _media_file_sizes(view: DatasetView, con, prefix: str, keys: list[str], template_key: str,
                      default: str, field_name: str) -> list[dict]:
    """On-disk size and number of episodes of every referenced video or audio file."""
    out = []
    columns = set(view.columns(con, "episodes"))
    for key in keys:
        chunk_col, file_col = _file_columns(prefix, key)
        if chunk_col not in columns or file_col not in columns:
            continue
        for chunk, file_, episodes in con.execute(
            f"SELECT {q(chunk_col)}, {q(file_col)}, count(*) FROM episodes WHERE {q(file_col)} IS NOT NULL "
            f"GROUP BY ALL ORDER BY 1, 2"
        ).fetchall():
            fields = {field_name: key, "chunk_index": int(chunk), "file_index": int(file_)}
            rel = view.file_path(template_key, default, **fields)
            path = resolve_inside(view.root, rel)
            if path.is_file():
                out.append({"file": rel, "megabytes": round(path.stat().st_size / MB, 6), "episodes": int(episodes)})
    return out


@check("video_file_size", "videos", WARNING,
       "An mp4 holding more than one episode stays under video_files_size_in_mb (bytes on disk).")
def video_file_size(view: DatasetView) -> CheckResult:
    if not view.video_keys:
        return not_applicable("the dataset has no video features")
    limit = float(view.info.get("video_files_size_in_mb") or DEFAULT_VIDEO_FILE_SIZE_MB)
    con = view.connect(episodes=True)
    return _size_result("video", _media_file_sizes(view, con, "videos", view.video_keys, "video_path", VIDEO_PATH,
                                                   "video_key"), limit)


# === audio (DoRobot) ==========================================================================

@check("audio_within_file", "audio", ERROR,
       "Per microphone and episode, 0 <= from_timestamp <= to_timestamp <= the WAV file's duration.")
def audio_within_file(view: DatasetView) -> CheckResult:
    keys = view.audio_keys
    if not keys:
        return not_applicable("the dataset has no audio features")
    con = view.connect(episodes=True)
    columns = set(view.columns(con, "episodes"))
    offending, checked = [], 0
    for key in keys:
        cols = _placement_columns("audio", key)
        if any(c not in columns for c in cols):
            offending.append({"audio_key": key, "episode_index": None, "fault": "placement columns missing"})
            continue
        placed = con.execute(
            f"SELECT episode_index, {', '.join(q(c) for c in cols)} FROM episodes "
            f"WHERE {q(cols[1])} IS NOT NULL ORDER BY ep_row").fetchall()  # null: no WAV (audio_wav_present)
        durations: dict[tuple[int, int], tuple[str, float | None, float]] = {}
        for episode, chunk, file_, start, end in placed:
            checked += 1
            slot = (int(chunk), int(file_))
            if slot not in durations:
                rel = view.file_path("audio_path", AUDIO_PATH, audio_key=key, chunk_index=slot[0], file_index=slot[1])
                path = resolve_inside(view.root, rel)
                if path.is_file():
                    import soundfile as sf  # recordings with microphones only

                    wav = sf.info(str(path))
                    durations[slot] = (rel, wav.frames / wav.samplerate, 1.0 / wav.samplerate)
                else:
                    durations[slot] = (rel, None, 0.0)
            rel, duration, sample = durations[slot]
            if duration is None:
                offending.append({"audio_key": key, "episode_index": episode, "file": rel, "fault": "file missing"})
            elif start is None or end is None or start < 0 or end < start or end > duration + sample:
                offending.append({"audio_key": key, "episode_index": episode, "file": rel, "from_timestamp": start,
                                  "to_timestamp": end, "file_duration_s": duration})
    counts = {"microphones": len(keys), "episodes_checked": checked, "offending": len(offending)}
    if offending:
        o = offending[0]
        if "file_duration_s" in o:
            why = (f"{o['audio_key']} episode {o['episode_index']}: {o['from_timestamp']}..{o['to_timestamp']} s "
                   f"is not within {o['file']} (0..{o['file_duration_s']:.6f} s)")
        else:
            why = f"{o['audio_key']} episode {o['episode_index']}: {o['fault']} {o.get('file') or ''}".rstrip()
        return failed(f"{len(offending)} microphone episodes point outside their WAV file; {why}", counts,
                      _plain_rows(offending))
    return passed(f"{checked} microphone episodes lie within their WAV files", counts)


@check("audio_file_size", "audio", WARNING,
       "A WAV file holding more than one episode stays under audio_files_size_in_mb (bytes on disk).")
def audio_file_size(view: DatasetView) -> CheckResult:
    if not view.audio_keys:
        return not_applicable("the dataset has no audio features")
    limit = float(view.info.get("audio_files_size_in_mb") or DEFAULT_AUDIO_FILE_SIZE_MB)
    con = view.connect(episodes=True)
    return _size_result("audio", _media_file_sizes(view, con, "audio", view.audio_keys, "audio_path", AUDIO_PATH,
                                                   "audio_key"), limit)


# === stats ====================================================================================

_QUANTILE_KEY = re.compile(r"^q(\d+)$")


def _stat_chain(stats: dict) -> list[str]:
    """min, the quantiles in increasing order, max: the stats that must be ordered."""
    quantiles = sorted((k for k in stats if _QUANTILE_KEY.match(k)), key=lambda k: int(k[1:]))
    return [k for k in ["min", *quantiles, "max"] if k in stats]


def _tolerance(*arrays: np.ndarray) -> np.ndarray:
    """Float noise allowance: 1e-6 of the values' magnitude (at least 1e-6 absolute)."""
    scale = np.ones_like(np.asarray(arrays[0], dtype=np.float64))
    for a in arrays:
        scale = np.maximum(scale, np.abs(np.asarray(a, dtype=np.float64)))
    return 1e-6 * scale


def _read_stats_json(view: DatasetView) -> dict | None:
    path = view.root / STATS_PATH
    if not path.is_file():
        return None
    return read_json_object(path, STATS_PATH)


def _episode_stats(view: DatasetView) -> tuple[list[int], list[int], dict[str, dict[str, np.ndarray]]]:
    """Episode indices, lengths and ``{feature: {stat: array (E, ...)}}`` from the stats/* columns
    (read once per view: four checks use them)."""
    return view.memo("episode_stats", lambda: _read_episode_stats(view))


# Stats cells (episodes x columns) read by one DuckDB query: a result of nested lists took ~0.2 KiB
# a cell (every stats column of 2000 episodes at once: ~16 MiB), so a few MiB at any size.
STATS_QUERY_CELLS = 16384


def _numeric_lists(arrow_type: pa.DataType) -> bool:
    """Numbers, or (fixed-size) lists of them nested to any depth: what nested_list_numpy reads."""
    while pa.types.is_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)


def _episodes_columns_reader(view: DatasetView, names: list[str]) -> Callable[[list[str]], pa.Table] | None:
    """Columns of meta/episodes in ``ep_row`` order straight from Arrow: the pending table, or
    the files in order when each has every column as numeric lists of one type. A DuckDB query
    sorting them by ``ep_row`` held ~8 MiB more at 2000 episodes, the peak of a conversion.
    None where only the DuckDB view reads them alike (files that differ, other types)."""
    import pyarrow.parquet as pq

    if view.pending_episodes is not None:
        table = view.pending_episodes
        if not all(n in table.column_names and _numeric_lists(table.schema.field(n).type) for n in names):
            return None
        return table.select
    files = view.episodes_files()
    try:
        schemas = [pq.read_schema(f) for f in files]
    except Exception:  # unreadable: the DuckDB view reports it as before
        return None
    for name in names:
        types = {str(schema.field(name).type) if name in schema.names else None for schema in schemas}
        if len(types) != 1 or None in types or not _numeric_lists(schemas[0].field(name).type):
            return None

    def read(part: list[str]) -> pa.Table:
        tables = [pq.ParquetFile(f).read(columns=part, use_threads=False) for f in files]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    return read


def stats_column_blocks(view: DatasetView, con, names: list[str], episodes: int) -> Iterator[tuple[list[str], pa.Table]]:
    """The meta/episodes columns ``names`` in row order, a few columns at a time (STATS_QUERY_CELLS)."""
    per_query = max(1, STATS_QUERY_CELLS // max(1, episodes))
    read = _episodes_columns_reader(view, names)
    for start in range(0, len(names), per_query):
        part = names[start:start + per_query]
        if read is not None:
            yield part, read(part)
        else:
            yield part, con.sql(f"SELECT {', '.join(q(n) for n in part)} FROM episodes ORDER BY ep_row").to_arrow_table()


def _read_episode_stats(view: DatasetView) -> tuple[list[int], list[int], dict[str, dict[str, np.ndarray]]]:
    if not view.has_episodes():
        return [], [], {}
    con = view.connect(episodes=True)
    columns = episode_stats_columns(view, con)
    keys = con.sql("SELECT episode_index, length FROM episodes ORDER BY ep_row").to_arrow_table()
    out: dict[str, dict[str, np.ndarray]] = {}
    for part, table in stats_column_blocks(view, con, list(columns), keys.num_rows):
        for name, column in zip(part, table.columns):
            feature, stat = columns[name]
            regular = nested_list_numpy(column)  # straight from the buffers when regular
            if regular is not None:
                out.setdefault(feature, {})[stat] = regular.astype(np.float64)
                continue
            values = column.to_pylist()
            if any(v is None for v in values):
                continue
            try:
                out.setdefault(feature, {})[stat] = np.asarray(values, dtype=np.float64)
            except ValueError:
                continue  # ragged values: nothing sensible to compare
    return keys.column("episode_index").to_pylist(), keys.column("length").to_pylist(), out


def _first_index(mask: np.ndarray) -> tuple | None:
    idx = np.argwhere(mask)
    return tuple(int(i) for i in idx[0]) if len(idx) else None


@check("stats_order", "dataset_stats", ERROR,
       "In meta/stats.json and in every episode's stats: min <= q01 <= q10 <= q50 <= q90 <= q99 <= max.")
def stats_order(view: DatasetView) -> CheckResult:
    global_stats = _read_stats_json(view)
    episodes, _, per_episode = _episode_stats(view)
    if global_stats is None and not per_episode:
        return not_applicable("the dataset has no meta/stats.json and no per-episode stats")
    offending, compared = [], 0

    def compare(where: list[str], feature: str, stats: dict[str, np.ndarray]):
        """``stats`` arrays carry a leading axis, one entry per place in ``where``."""
        nonlocal compared
        chain = _stat_chain(stats)
        for low, high in zip(chain, chain[1:]):
            a, b = stats[low], stats[high]
            if a.shape != b.shape:
                offending.append({"where": where[0], "feature": feature, "pair": f"{low} <= {high}",
                                  "element": None, "low": None, "high": f"shapes {a.shape[1:]} vs {b.shape[1:]}"})
                continue
            compared += len(where)
            bad = ~(a <= b + _tolerance(a, b))
            for i in np.flatnonzero(bad.reshape(len(where), -1).any(axis=1)):
                at = _first_index(bad[i])
                offending.append({"where": where[i], "feature": feature, "pair": f"{low} <= {high}",
                                  "element": str(list(at)), "low": float(a[i][at]), "high": float(b[i][at])})

    for feature, stats in (global_stats or {}).items():
        if isinstance(stats, dict):
            compare([STATS_PATH], feature, {k: np.asarray([v], np.float64) for k, v in stats.items() if k != "count"})
    for feature, stats in per_episode.items():
        compare([f"episode {e}" for e in episodes], feature, {k: v for k, v in stats.items() if k != "count"})
    counts = {"comparisons": compared, "offending": len(offending)}
    if offending:
        o = offending[0]
        return failed(f"{len(offending)} stats are out of order; {o['where']} {o['feature']}: {o['pair']} fails "
                      f"at element {o['element']} ({o['low']} > {o['high']})", counts, offending)
    return passed(f"{compared} min/quantile/max sequences are ordered", counts)


@check("stats_counts", "dataset_stats", ERROR,
       "meta/stats.json count equals the sum of the episodes' counts; an episode's count of a "
       "numeric data feature equals its length (camera counts, sampled frames, at most its length).")
def stats_counts(view: DatasetView) -> CheckResult:
    global_stats = _read_stats_json(view)
    episodes, lengths, per_episode = _episode_stats(view)
    with_counts = {f: s["count"].reshape(len(episodes), -1)[:, 0] for f, s in per_episode.items() if "count" in s}
    if not with_counts:
        return not_applicable("no per-episode stats with counts")
    lengths_arr = np.asarray(lengths, dtype=np.float64)
    numeric = {k for k in view.column_features
               if isinstance(view.features.get(k), dict) and view.features[k].get("dtype") not in ("image", "string")}
    offending = []
    for feature, counts_e in with_counts.items():
        if global_stats and isinstance(global_stats.get(feature), dict) and "count" in global_stats[feature]:
            total = float(np.asarray(global_stats[feature]["count"], np.float64).ravel()[0])
            if total != counts_e.sum():
                offending.append({"where": STATS_PATH, "feature": feature, "count": total,
                                  "expected": float(counts_e.sum()), "rule": "sum of episode counts"})
        if feature in numeric:
            bad = np.flatnonzero(counts_e != lengths_arr)
            rule = "episode length"
        else:
            bad = np.flatnonzero((counts_e > lengths_arr) | (counts_e < 1))
            rule = "between 1 and the episode length"
        for i in bad:
            offending.append({"where": f"episode {episodes[i]}", "feature": feature, "count": float(counts_e[i]),
                              "expected": float(lengths_arr[i]), "rule": rule})
    counts = {"features": len(with_counts), "episodes": len(episodes), "offending": len(offending)}
    if offending:
        o = offending[0]
        return failed(f"{len(offending)} stats counts are inconsistent; {o['where']} {o['feature']}: count "
                      f"{o['count']:g}, expected {o['expected']:g} ({o['rule']})", counts, offending)
    return passed(f"counts of {len(with_counts)} features are consistent over {len(episodes)} episodes", counts)


def _global_vs_episodes(view: DatasetView, stat: str, expected_fn, what: str) -> CheckResult:
    global_stats = _read_stats_json(view)
    episodes, _, per_episode = _episode_stats(view)
    if global_stats is None:
        return not_applicable(f"the dataset has no {STATS_PATH}")
    if not per_episode:
        return not_applicable("no per-episode stats to compare with")
    offending, compared = [], 0
    for feature, stats in per_episode.items():
        g = global_stats.get(feature)
        if not isinstance(g, dict) or stat not in g:
            continue
        expected = expected_fn(stats)
        if expected is None:
            continue
        actual = np.asarray(g[stat], np.float64)
        if actual.shape != expected.shape:
            offending.append({"feature": feature, "element": None, "stats_json": str(actual.shape),
                              "expected": str(expected.shape)})
            continue
        compared += 1
        scale = _tolerance(actual, expected, *(np.asarray(g[k], np.float64) for k in ("min", "max") if k in g
                                               and np.shape(g[k]) == actual.shape))
        bad = ~(np.abs(actual - expected) <= scale)
        if bad.any():
            at = _first_index(bad)
            offending.append({"feature": feature, "element": str(list(at)), "stats_json": float(actual[at]),
                              "expected": float(expected[at])})
    counts = {"features": compared, "offending": len(offending)}
    if offending:
        o = offending[0]
        return failed(f"{len(offending)} features have a global {stat} that is not {what}; {o['feature']} element "
                      f"{o['element']}: {STATS_PATH} has {o['stats_json']}, expected {o['expected']}",
                      counts, offending)
    return passed(f"global {stat} is {what} for {compared} features", counts)


@check("stats_extremes", "dataset_stats", ERROR,
       "meta/stats.json min and max equal the extremes of the per-episode min and max.")
def stats_extremes(view: DatasetView) -> CheckResult:
    low = _global_vs_episodes(view, "min", lambda s: s["min"].min(axis=0) if "min" in s else None,
                              "the smallest episode min")
    high = _global_vs_episodes(view, "max", lambda s: s["max"].max(axis=0) if "max" in s else None,
                               "the largest episode max")
    if not low.applicable:
        return low
    if low.passed and high.passed:
        return passed(f"min and max match the episode extremes for {low.counts.get('features', 0)} features",
                      {"features": low.counts.get("features", 0), "offending": 0})
    bad = low if not low.passed else high
    offending = (low.offending if not low.passed else []) + (high.offending if not high.passed else [])
    return failed(bad.description, {"features": low.counts.get("features", 0),
                                    "offending": low.counts.get("offending", 0) + high.counts.get("offending", 0)},
                  offending)


def _weighted_mean(stats: dict[str, np.ndarray]) -> np.ndarray | None:
    if "mean" not in stats or "count" not in stats:
        return None
    n = stats["count"].reshape(len(stats["count"]), -1)[:, 0]
    if n.sum() <= 0:
        return None
    w = n.reshape((-1,) + (1,) * (stats["mean"].ndim - 1))
    return (w * stats["mean"]).sum(axis=0) / n.sum()


@check("stats_mean", "dataset_stats", ERROR,
       "meta/stats.json mean equals the count-weighted mean of the episodes' means.")
def stats_mean(view: DatasetView) -> CheckResult:
    return _global_vs_episodes(view, "mean", _weighted_mean, "the count-weighted mean of the episode means")


# === info =====================================================================================

@check("info_version", "info", ERROR, f"codebase_version is {CODEBASE_VERSION!r} (LeRobot rejects 2.x).")
def info_version(view: DatasetView) -> CheckResult:
    version = view.info.get("codebase_version")
    if version != CODEBASE_VERSION:
        return failed(f"codebase_version is {version!r}, expected {CODEBASE_VERSION!r}",
                      offending=[{"key": "codebase_version", "value": version, "expected": CODEBASE_VERSION}])
    return passed(f"codebase_version {CODEBASE_VERSION}")


@check("info_totals", "info", ERROR,
       "total_episodes, total_frames and total_tasks equal the episode rows, data rows and task rows on disk.")
def info_totals(view: DatasetView) -> CheckResult:
    con = view.connect(data=True, episodes=True, tasks=True)
    actual = {
        "total_episodes": con.execute("SELECT count(*) FROM episodes").fetchone()[0],
        "total_frames": con.execute("SELECT count(*) FROM data").fetchone()[0],
        "total_tasks": con.execute("SELECT count(*) FROM tasks").fetchone()[0],
    }
    offending = [{"key": k, "info": view.info.get(k), "on_disk": v} for k, v in actual.items() if view.info.get(k) != v]
    if offending:
        o = offending[0]
        return failed(f"{len(offending)} totals differ from the files; {o['key']} is {o['info']!r} in {INFO_PATH}, "
                      f"{o['on_disk']} on disk", actual, offending)
    return passed(f"{actual['total_episodes']} episodes, {actual['total_frames']} frames, "
                  f"{actual['total_tasks']} tasks as declared", actual)


_TEMPLATE_FIELDS = {
    "data_path": ({"chunk_index", "file_index"}, "data"),
    "video_path": ({"video_key", "chunk_index", "file_index"}, "videos"),
    "audio_path": ({"audio_key", "chunk_index", "file_index"}, "audio"),
}


def _template_fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


@check("info_paths", "info", ERROR,
       "data_path (and video_path / audio_path when there are cameras / microphones) are templates "
       "with the v3.0 fields whose every use in meta/episodes stays inside the dataset.")
def info_paths(view: DatasetView) -> CheckResult:
    needed = {"data_path": True, "video_path": bool(view.video_keys), "audio_path": bool(view.audio_keys)}
    con = view.connect(episodes=True) if view.has_episodes() else None
    columns = set(view.columns(con, "episodes")) if con is not None else set()
    offending, resolved = [], 0
    for key, required in needed.items():
        template = view.info.get(key)
        if not required:
            continue
        fields, prefix = _TEMPLATE_FIELDS[key]
        if not isinstance(template, str):
            offending.append({"key": key, "template": template, "fault": "missing or not a string"})
            continue
        try:
            found = _template_fields(template)
        except ValueError as e:
            offending.append({"key": key, "template": template, "fault": f"not a format string: {e}"})
            continue
        if found != fields:
            offending.append({"key": key, "template": template,
                              "fault": f"fields {sorted(found)}, expected {sorted(fields)}"})
            continue
        keys = {"videos": view.video_keys, "audio": view.audio_keys}.get(prefix, [""])
        for feature in keys:
            chunk_col, file_col = _file_columns(prefix, feature)
            slots = [(0, 0)]
            if chunk_col in columns and file_col in columns:
                slots = con.execute(f"SELECT DISTINCT {q(chunk_col)}, {q(file_col)} FROM episodes "
                                    f"WHERE {q(file_col)} IS NOT NULL ORDER BY 1, 2").fetchall() or [(0, 0)]
            for chunk, file_ in slots:
                values = {"chunk_index": int(chunk), "file_index": int(file_)}
                if "video_key" in fields:
                    values["video_key"] = feature
                if "audio_key" in fields:
                    values["audio_key"] = feature
                rel = template.format(**values)
                resolved += 1
                try:
                    resolve_inside(view.root, rel)
                except ValueError:
                    offending.append({"key": key, "template": template, "fault": f"{rel!r} leaves the dataset"})
                    break
    counts = {"paths_resolved": resolved, "offending": len(offending)}
    if offending:
        o = offending[0]
        return failed(f"{len(offending)} path templates are unusable; {o['key']} {o['template']!r}: {o['fault']}",
                      counts, offending)
    return passed(f"path templates resolve {resolved} files inside the dataset", counts)


# === reports ==================================================================================

def status_word(result: CheckResult) -> str:
    if not result.applicable:
        return "skip"
    if result.passed:
        return "ok"
    return "FAIL" if result.severity == ERROR else "warn"


def format_report(results: list[CheckResult], root: Path | str | None = None) -> str:
    """A plain-text table for the terminal: one line per check, offending rows under failures."""
    lines = []
    if root is not None:
        lines.append(f"validation of {root}")
    width = max([len(r.name) for r in results] + [5])
    asset_width = max([len(r.asset) for r in results] + [5])
    lines.append(f"{'status':<6}  {'check':<{width}}  {'asset':<{asset_width}}  {'severity':<8}  result")
    for r in results:
        lines.append(f"{status_word(r):<6}  {r.name:<{width}}  {r.asset:<{asset_width}}  {r.severity:<8}  "
                     f"{r.description}")
        if not r.passed:
            for row in r.offending:
                lines.append(" " * 10 + ", ".join(f"{k}={v}" for k, v in row.items()))
    errors = sum(r.is_error for r in results)
    warnings = sum(1 for r in results if not r.passed and r.severity == WARNING)
    ran = sum(r.applicable for r in results)
    verdict = "valid" if errors == 0 else "INVALID"
    lines.append(f"{verdict}: {ran} checks run, {errors} errors, {warnings} warnings, "
                 f"{len(results) - ran} not applicable")
    return "\n".join(lines)


def results_to_json(results: list[CheckResult], root: Path | str | None = None) -> dict:
    return {
        "dataset": str(root) if root is not None else None,
        "valid": is_valid(results),
        "checks": [{**dataclasses.asdict(r), "status": status_word(r)} for r in results],
    }


def offending_markdown(rows: list[dict]) -> str:
    """Offending rows as a markdown table (Dagster shows it in the UI)."""
    if not rows:
        return ""
    columns: list[str] = []
    for row in rows:
        for k in row:
            if k not in columns:
                columns.append(k)

    def cell(value) -> str:
        text = "" if value is None else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)

