"""Per-episode statistics as ``stats/<feature>/<stat>`` columns, and meta/stats.json.

Two modes (``ConversionSettings.stats``): ``copy`` takes the v2.1 per-episode stats as they are
(the official converter's behaviour, no quantiles); ``recompute`` computes them from the data,
with quantiles (see the recompute section below). Aggregation (notes §4.4) uses exact pooled
formulas: ``N = Σ n_i``, ``mean = Σ n_i·mean_i / N``, ``var = Σ n_i·(std_i² + (mean_i − mean)²) / N``,
element-wise min/max; quantiles are the dataset's own (:func:`dataset_quantiles`), not a mean or an
envelope of per-episode quantiles (LeRobot #3804/#4156).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

from dorobot_assets.lib.arrow import (
    column_numpy,
    int64_array,
    list_values,
    nested_list_array,
    nested_list_numpy,
    release_freed_memory,
)
from dorobot_assets.lib.errors import OutputError, RecordingError
from dorobot_assets.lib.fsutil import atomic_path, remove_stale_temp_files, write_json_atomic
from dorobot_assets.lib.settings import DEFAULT_STATS_WORKERS
from dorobot_assets.lib.v21 import EPISODES_STATS_FILE, INFO_FILE, ParsedJsonList, Recording, read_episode_data
from dorobot_assets.lib.v30 import QUANTILE_KEYS, QUANTILES, STAT_KEYS, STATS_PATH

STATS_PREFIX = "stats/"


def stats_column(feature: str, stat: str) -> str:
    return f"{STATS_PREFIX}{feature}/{stat}"


def split_stats_column(column: str) -> tuple[str, str]:
    feature, _, stat = column[len(STATS_PREFIX):].rpartition("/")
    return feature, stat


def _arrow_type(values: list[np.ndarray]) -> pa.DataType:
    ndim = max(v.ndim for v in values)
    is_int = all(np.issubdtype(v.dtype, np.integer) or v.dtype == np.bool_ for v in values)
    t: pa.DataType = pa.int64() if is_int else pa.float64()
    for _ in range(max(1, ndim)):
        t = pa.list_(t)
    return t


def stats_table(episode_indices: list[int], per_episode: list[dict[str, dict[str, np.ndarray]]]) -> pa.Table:
    """Build the ``episode_index`` + ``stats/*`` table. Feature and stat order follow episode 0."""
    columns: dict[str, pa.Array] = {"episode_index": int64_array(episode_indices)}
    if not per_episode:
        return pa.table(columns)
    order: list[tuple[str, str]] = []
    for feature, stats in per_episode[0].items():
        for stat in stats:
            order.append((feature, stat))
    for feature, stat in order:
        values = [np.atleast_1d(np.asarray(ep[feature][stat])) for ep in per_episode]
        typ = _arrow_type(values)
        base = typ
        while pa.types.is_list(base):
            base = base.value_type
        cast = np.int64 if pa.types.is_integer(base) else np.float64
        if len({v.shape for v in values}) == 1:  # the usual case: one shape for every episode
            columns[stats_column(feature, stat)] = nested_list_array(np.stack(values).astype(cast), base)
        else:
            columns[stats_column(feature, stat)] = pa.array([v.astype(cast).tolist() for v in values], typ)
    return pa.table(columns)


# Lines of episodes_stats.jsonl parsed at once: parsed JSON is several times the size of its
# numbers, so a block of it is held, not the recording's.
STATS_BLOCK_EPISODES = 256
_JSON_STRING = re.compile(r'"[^"]*"')  # a JSON string (in text without backslashes)
_JSON_SPACE = " \t\r\n"
_NOT_PYTHONS_NUMBER = re.compile(r"-NaN|Inf(?!inity)")  # Arrow's JSON reader takes these, Python's json does not
_INTEGER_ZERO = re.compile(r"-0(?![.\deE])")  # Python's integer 0, Arrow's -0.0 among floats
_DIGITS_AS_ZERO = str.maketrans("123456789", "000000000")


def _read_unlike_python(text: str) -> bool:
    """Whether Arrow's JSON reader may read ``text`` otherwise than Python's json: the number
    patterns above, integers of 19 digits or more (beyond int64 Arrow makes them floats, Python
    keeps exact ints), and null (pyarrow 26 drops a null that starts a list, leaving the list's
    offsets beyond its values). Substring searches first: the regexes are slow on digits."""
    if "null" in text:
        return True
    if ("NaN" in text or "Inf" in text) and _NOT_PYTHONS_NUMBER.search(text):
        return True
    return bool(_INTEGER_ZERO.search(text)) or "0" * 19 in text.translate(_DIGITS_AS_ZERO)


class ParsedStats(NamedTuple):
    strings: list[str]  # the JSON strings (keys) of each line, in order: the same on every line
    episodes: np.ndarray | None  # each line's episode_index; None unless all are integers
    stats: dict[str, dict[str, np.ndarray]]  # {feature: {stat: (lines, ...) int64 or float64}}


def parse_stats_lines(lines: list[str]) -> ParsedStats | None:
    """Lines of episodes_stats.jsonl parsed by Arrow's JSON reader (in C++, ~10x faster than
    Python's json, and no Python object per number), or None where that could differ from
    reading each line with Python's json: lines that are not alike (the same JSON strings in the
    same order, every feature and stat on every line, each stat a number or a regular array of
    numbers of one shape) or hold numbers the readers take differently. A stat that is a bare
    number comes as an array of one, as ``np.atleast_1d`` makes it."""
    lines = [line.strip(_JSON_SPACE) for line in lines]
    if not lines or not all(line[:1] == "{" and line[-1:] == "}" for line in lines):
        return None
    text = "\n".join(lines)
    if "\\" in text or _read_unlike_python(text):
        return None
    strings = _JSON_STRING.findall(lines[0])
    if any(_JSON_STRING.findall(line) != strings for line in lines[1:]):
        return None
    data = text.encode("utf-8")
    try:
        # glibc's allocator: with Arrow's default (mimalloc) a parse raised RSS by ~7 MiB for
        # <1 MiB of buffers (then released by release_freed_memory, and taken again next time)
        table = pa_json.read_json(
            pa.BufferReader(data),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=max(1 << 20, len(data) + 1)),
            memory_pool=pa.system_memory_pool(),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    # One row per line proves every line was one whole object (see v21._read_stats_lines).
    if table.num_rows != len(lines) or "stats" not in table.column_names:
        return None
    column = table.column("stats")
    if column.num_chunks != 1 or not pa.types.is_struct(column.type) or column.null_count:
        return None
    stats: dict[str, dict[str, np.ndarray]] = {}
    features = column.chunk(0)
    for f, feature in enumerate(features.type):
        stat_arrays = features.field(f)
        if not pa.types.is_struct(stat_arrays.type) or stat_arrays.null_count:
            return None
        stats[feature.name] = {}
        for s, stat in enumerate(stat_arrays.type):
            values = nested_list_numpy(stat_arrays.field(s))  # None: ragged, null or not numbers
            if values is None:
                return None
            # a copy: views would keep the block's Arrow table alive
            stats[feature.name][stat.name] = (values[:, None] if values.ndim == 1 else values).copy()
    episodes = None
    if "episode_index" in table.column_names:
        index = table.column("episode_index")
        if pa.types.is_int64(index.type) and not index.null_count:
            episodes = column_numpy(index).copy()
    return ParsedStats(strings, episodes, stats)


def _copied_feature(rec: Recording, episode: int, feature: str) -> bool:
    """Whether ``episode``'s stats of ``feature`` are copied: not for a dropped camera; a feature
    info.json does not declare is an error."""
    if feature in rec.dropped_features:
        return False
    if feature not in rec.features:
        raise RecordingError(
            "stats_mismatch", rec.root / EPISODES_STATS_FILE,
            f"episode {episode} has stats for {feature!r}, which info.json does not declare",
        )
    return True


def _parsed_stats_table(rec: Recording, lines: list[str]) -> pa.Table | None:
    """:func:`copy_source_stats` from the recording's stats ``lines`` where
    :func:`parse_stats_lines` reads them alike (one block at a time), or None for the Python path."""
    blocks: list[dict[str, dict[str, np.ndarray]]] = []
    strings = None
    for start in range(0, len(lines), STATS_BLOCK_EPISODES):
        parsed = parse_stats_lines(lines[start:start + STATS_BLOCK_EPISODES])
        if parsed is None or (strings is not None and parsed.strings != strings):
            return None
        strings = parsed.strings
        blocks.append(parsed.stats)
    if not blocks:
        return None
    columns: dict[str, pa.Array] = {"episode_index": int64_array([e.index for e in rec.episodes])}
    for feature, stats in blocks[0].items():  # alike lines: episode 0 stands for every episode
        if not _copied_feature(rec, 0, feature):
            continue
        for stat in stats:
            parts = [block[feature][stat] for block in blocks]
            if any(p.shape[1:] != parts[0].shape[1:] for p in parts):
                return None  # another shape in another block: the Python path builds ragged lists
            # int64 where every episode's values are integers, as _arrow_type decides
            dtype = np.int64 if all(p.dtype == np.int64 for p in parts) else np.float64
            columns[stats_column(feature, stat)] = nested_list_array(np.concatenate(parts, dtype=dtype),
                                                                     pa.from_numpy_dtype(dtype))
    return pa.table(columns)


def copy_source_stats(rec: Recording) -> pa.Table:
    """v2.1 per-episode stats as they are (the official converter's behaviour; no quantiles).

    Read by Arrow a block of lines at a time where :func:`parse_stats_lines` allows, else with
    Python's json (the same table or error either way)."""
    lines = rec.episodes_stats_lines  # read from the file (and checked) once here
    if lines is None:
        raise RecordingError(
            "stats_missing", rec.root / EPISODES_STATS_FILE,
            f"a {rec.version} recording has no per-episode stats to copy; use stats mode 'recompute'",
        )
    table = _parsed_stats_table(rec, lines)
    if table is not None:
        return table
    # Python's json, episode by episode: odd JSON, differing keys or shapes
    per_episode = []
    for e, stats in enumerate(ParsedJsonList(lines, "stats")):
        ep = {}
        for feature, fstats in stats.items():
            if not _copied_feature(rec, e, feature):
                continue
            ep[feature] = {k: np.atleast_1d(np.asarray(v)) for k, v in fstats.items()}
        per_episode.append(ep)
    keys0 = [(f, tuple(s)) for f, s in per_episode[0].items()]
    for e, ep in enumerate(per_episode):
        if [(f, tuple(s)) for f, s in ep.items()] != keys0:
            raise RecordingError(
                "stats_mismatch", rec.root / EPISODES_STATS_FILE,
                f"episode {e} has different stats keys from episode 0",
            )
    return stats_table([e.index for e in rec.episodes], per_episode)


def table_to_episode_stats(table: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    """``{feature: {stat: array of shape (E, ...)}}`` from a stats table."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in table.column_names:
        if not name.startswith(STATS_PREFIX):
            continue
        feature, stat = split_stats_column(name)
        values = nested_list_numpy(table.column(name))
        out.setdefault(feature, {})[stat] = np.asarray(table.column(name).to_pylist()) if values is None else values
    return out


def aggregate_feature(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pool one feature's per-episode stats (arrays with a leading episode axis)."""
    counts = stats["count"].reshape(len(stats["count"]), -1)[:, 0].astype(np.float64)
    total = counts.sum()
    shape = (-1,) + (1,) * (stats["mean"].ndim - 1)
    w = counts.reshape(shape)
    mean = (w * stats["mean"]).sum(axis=0) / total
    var = (w * (stats["std"].astype(np.float64) ** 2 + (stats["mean"] - mean) ** 2)).sum(axis=0) / total
    out = {
        "min": stats["min"].min(axis=0),
        "max": stats["max"].max(axis=0),
        "mean": mean,
        "std": np.sqrt(np.maximum(var, 0.0)),
        "count": np.array([int(total)], np.int64),
    }
    return out


def aggregate(table: pa.Table, quantiles: dict[str, dict[str, np.ndarray]] | None = None) -> dict:
    """Dataset stats from the per-episode stats table; ``quantiles`` adds dataset-level q keys."""
    result: dict = {}
    for feature, stats in table_to_episode_stats(table).items():
        agg = aggregate_feature(stats)
        if quantiles and feature in quantiles:
            agg.update(quantiles[feature])
        result[feature] = agg
    return result


def stats_to_json(stats: dict) -> dict:
    return {f: {k: np.asarray(v).tolist() for k, v in s.items()} for f, s in stats.items()}


def write_stats_json(stats: dict, dataset_root: Path) -> Path:
    path = Path(dataset_root) / STATS_PATH
    write_json_atomic(path, stats_to_json(stats))
    return path


ALL_STAT_KEYS = STAT_KEYS + QUANTILE_KEYS


# ----------------------------------------------------------------------------- recompute
#
# Per episode, every numeric parquet column (vectors per dimension) and every camera (sampled,
# decoded frames) gets min, max, mean, std, count and q01..q99. Quantiles follow LeRobot's
# histogram algorithm (notes §4.1) so the per-episode numbers mean what LeRobot's mean. For the
# dataset's quantiles the work folder keeps "value bins": counts with the exact smallest and
# largest value per bin of a power-of-two grid, per group of episodes (numeric) and pixel-level
# counts per episode (cameras). Grids of different groups nest, so the dataset's quantiles come
# from merging them (dataset_quantiles) without re-reading the data.

HISTOGRAM_BINS = 5000  # per dimension, as LeRobot's RunningQuantileStats (notes §4.1)
EDGE_PADDING = 1e-10  # LeRobot widens the first batch's range by this much on each side
STATS_ALGORITHM = "2"  # bump when per-episode results change: cached episodes are then recomputed
STATS_CACHE_DIR = "episode_stats"
STATS_INDEX_FILE = "index.json"
NUMERIC = "numeric"
CAMERA = "camera"
_FLOAT64_MANTISSA_BITS = 52
# Numeric values (rows x dimensions) read, sorted and binned at once: a chunk's arrays are a
# few float64 copies of this (~2 MiB each), whatever the recording's size (an episode longer
# than that is a chunk of its own). Measured fastest per value: larger arrays fall out of cache.
NUMERIC_CHUNK_VALUES = 1 << 18
# Episodes whose numeric value bins share one cache file. A changed episode makes its group's
# data be read again for the bins; a group's file holds at most ~10^4 bins per dimension.
NUMERIC_GROUP_EPISODES = 512
# Bins of a GridBins dimension at most: its grid step is more than range / (2 * HISTOGRAM_BINS)
# (grid_exponent), so its range spans fewer than 2 * HISTOGRAM_BINS steps, touching one more bin.
GRID_BINS_CAPACITY = 2 * HISTOGRAM_BINS + 2
# Episodes whose camera pixel-level counts share one cache file.
CAMERA_BLOCK_EPISODES = 128
# Data files read ahead by threads while a chunk is computed (pyarrow releases the GIL).
READ_THREADS = 2


def stats_features(rec: Recording) -> dict[str, str]:
    """Features whose statistics are recomputed, in info.json order: ``numeric`` (every value of
    a parquet column) or ``camera`` (sampled decoded frames). Strings and audio have none."""
    kinds: dict[str, str] = {}
    for name, feature in rec.features.items():
        if feature.is_video:
            kinds[name] = CAMERA
        elif feature.is_column and feature.is_numeric:
            kinds[name] = NUMERIC
        elif feature.dtype == "image":
            raise RecordingError(
                "stats_unsupported", rec.root / INFO_FILE,
                f"feature {name!r} holds PNG images in the parquet files; recomputing their "
                "statistics is not supported: use stats mode 'copy'",
            )
    return kinds


def _stat_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape) if shape else (1,)


def column_matrix(column: pa.ChunkedArray, shape: tuple[int, ...], path: Path, name: str) -> np.ndarray:
    """A numeric column as an ``(rows, prod(shape))`` array in its own dtype (lists flattened).

    Refuses nulls, ragged or wrongly sized vectors, non-numeric values and NaN/inf: each would
    make the statistics silently wrong."""
    arr = column.combine_chunks()
    rows = len(arr)
    width = int(np.prod(shape)) if shape else 1
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        if arr.null_count:
            raise RecordingError("null_values", path, f"column {name!r} has {arr.null_count} null vectors")
        if not pa.types.is_fixed_size_list(arr.type) and len(arr):
            lengths = np.diff(column_numpy(arr.offsets))
            if lengths.min() != lengths.max():
                raise RecordingError(
                    "bad_vector_length", path,
                    f"column {name!r} has vectors of {lengths.min()} to {lengths.max()} values; "
                    f"info.json shape is {list(shape)}",
                )
        arr = list_values(arr)
    if arr.null_count:
        raise RecordingError("null_values", path, f"column {name!r} has {arr.null_count} null values")
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type)):
        raise RecordingError("not_numeric", path, f"column {name!r} holds {arr.type}, not numbers")
    if len(arr) != rows * width:
        raise RecordingError(
            "bad_vector_length", path,
            f"column {name!r} holds {len(arr)} values in {rows} rows; info.json shape {list(shape)} "
            f"needs {width} per row",
        )
    values = column_numpy(arr).reshape(rows, width)
    # NaN and inf show in the extremes; finding the first one costs a pass only when there is one
    if values.dtype.kind == "f" and len(values) and not np.isfinite(values.min() + values.max()):
        bad = ~np.isfinite(values)
        if bad.any():
            row, dim = (int(v[0]) for v in np.nonzero(bad))
            raise RecordingError(
                "non_finite_values", path,
                f"column {name!r} row {row} dimension {dim} is {values[row, dim]}: statistics are "
                "undefined; use stats mode 'copy' to keep the source's",
            )
    return values


# --- LeRobot's histogram quantiles


def histogram_quantiles(hist: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """QUANTILES of one histogram, read as LeRobot reads them (notes §4.1): the first bin whose
    cumulative count reaches ``q * total``, interpolated linearly inside it; bin 0 gives its
    lower edge, past the last bin the upper edge, an empty bin its lower edge."""
    cum = np.cumsum(hist)
    total = cum[-1]
    out = np.empty(len(QUANTILES))
    for j, q in enumerate(QUANTILES):
        target = q * total
        i = int(np.searchsorted(cum, target, side="left"))
        if i == 0:
            out[j] = edges[0]
        elif i >= len(hist):
            out[j] = edges[-1]
        elif hist[i] == 0:
            out[j] = edges[i]
        else:
            out[j] = edges[i] + (target - cum[i - 1]) / hist[i] * (edges[i + 1] - edges[i])
    return out


def lerobot_quantiles(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """QUANTILES of one dimension from a HISTOGRAM_BINS histogram over its own range (one batch
    holding the whole episode, so the histogram is never rebuilt). Results are clamped to
    [min, max]: LeRobot's padded outer edges are not values of the data.

    The literal algorithm, one dimension at a time; the statistics use
    :func:`lerobot_quantiles_many`, which gives the same numbers for many at once (tested)."""
    lo, hi = float(values.min()), float(values.max())
    edges = np.linspace(lo - EDGE_PADDING, hi + EDGE_PADDING, HISTOGRAM_BINS + 1)
    hist, _ = np.histogram(values, bins=edges, weights=weights)
    return np.clip(histogram_quantiles(hist, edges), lo, hi)


def _edges(j: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """``np.linspace(start, stop, HISTOGRAM_BINS + 1)[j]`` for the chosen ``j`` only, in
    linspace's own arithmetic, so bit for bit the edges LeRobot's histogram uses."""
    delta = stop - start
    step = delta / HISTOGRAM_BINS
    jf = j.astype(np.float64)
    edge = np.where(step == 0, jf / HISTOGRAM_BINS * delta + start, jf * step + start)
    return np.where(j == HISTOGRAM_BINS, stop, edge)


def _bin_of(value: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """The histogram bin of each value: the last j < HISTOGRAM_BINS with edge(j) <= value
    (np.histogram counts the top edge in the last bin). Guessed by division and checked against
    the exact edges; a wrong guess (rounding, or equal edges of a tiny range at a large
    magnitude) is settled by binary search."""
    last_bin = HISTOGRAM_BINS - 1
    step = (stop - start) / HISTOGRAM_BINS
    with np.errstate(divide="ignore", invalid="ignore"):
        guess = np.where(step > 0, np.floor((value - start) / step), last_bin)
    j = np.clip(np.nan_to_num(guess, nan=last_bin), 0, last_bin).astype(np.int64)
    wrong = (_edges(j, start, stop) > value) | ((j < last_bin) & (_edges(j + 1, start, stop) <= value))
    if wrong.any():
        w = np.flatnonzero(wrong)
        x, lo_edge, hi_edge = value[w], start[w], stop[w]
        first, last = np.zeros(len(w), np.int64), np.full(len(w), last_bin, np.int64)
        while True:
            open_ = first < last
            if not open_.any():
                break
            mid = (first + last + 1) // 2
            inside = _edges(mid, lo_edge, hi_edge) <= x
            first = np.where(open_ & inside, mid, first)
            last = np.where(open_ & ~inside, mid - 1, last)
        j[w] = first
    return j


def lerobot_quantiles_many(
    n: np.ndarray, lo: np.ndarray, hi: np.ndarray,
    order_statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    count_below: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """:func:`lerobot_quantiles` of many lanes (sets of values) at once, ``(len(QUANTILES), lanes)``.

    A lane is described by its size ``n``, ``lo`` and ``hi`` and two functions over flat arrays
    of (lane, ...) pairs: ``order_statistic(lane, r)``, the lane's r-th smallest value (1-based),
    and ``count_below(lane, v, guess)``, how many of its values are < v (``guess`` is likely
    right). The histogram is never built: the first bin whose cumulative count reaches
    ``t = q·n`` is the bin of the ``ceil(t)``-th smallest value, and its two cumulative counts
    are the counts below its edges."""
    lanes = len(n)
    nf = np.asarray(n, np.float64)
    lane = np.tile(np.arange(lanes), len(QUANTILES))
    target = np.repeat(np.asarray(QUANTILES), lanes) * nf[lane]
    rank = np.ceil(target).astype(np.int64)
    value = order_statistic(lane, rank)
    start, stop = (lo - EDGE_PADDING)[lane], (hi + EDGE_PADDING)[lane]
    j = _bin_of(value, start, stop)
    left, right = _edges(j, start, stop), _edges(j + 1, start, stop)
    below = count_below(lane, left, (rank - 1).astype(np.float64))
    upto = np.where(j == HISTOGRAM_BINS - 1, nf[lane], count_below(lane, right, rank.astype(np.float64)))
    with np.errstate(invalid="ignore", divide="ignore"):  # bin 0 is not interpolated
        inner = left + (target - below) / (upto - below) * (right - left)
    value = np.clip(np.where(j == 0, start, inner), lo[lane], hi[lane])
    return value.reshape(len(QUANTILES), lanes)


def _count_below_sorted(sorted_values: np.ndarray, first: np.ndarray, n: np.ndarray
                        ) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """``count_below`` for lanes ``sorted_values[first : first + n]`` (each ascending): the
    guess is checked against its neighbours, binary search where it is wrong."""
    top = len(sorted_values) - 1

    def count_below(lane: np.ndarray, v: np.ndarray, guess: np.ndarray) -> np.ndarray:
        g = guess.astype(np.int64)
        a, size = first[lane], n[lane]
        ok = ((g == 0) | (sorted_values[np.clip(a + g - 1, 0, top)] < v)) & \
             ((g == size) | (sorted_values[np.clip(a + g, 0, top)] >= v))
        if not ok.all():
            w = np.flatnonzero(~ok)
            lo, hi, x = a[w].copy(), a[w] + size[w], v[w]
            while True:
                open_ = lo < hi
                if not open_.any():
                    break
                mid = (lo + hi) // 2
                less = sorted_values[np.minimum(mid, top)] < x
                lo = np.where(open_ & less, mid + 1, lo)
                hi = np.where(open_ & ~less, mid, hi)
            g[w] = lo - a[w]
        return g.astype(np.float64)

    return count_below


# --- per-episode statistics, many episodes at once


class ChunkBuffers:
    """A chunk's values ``(dimensions, rows)`` and temporaries of one row, allocated once for
    every chunk: arrays of each chunk's size, new for each, fragmented the heap (RSS crept up
    chunk after chunk, ~7 MiB over 2000 episodes)."""

    def __init__(self, values: int, rows: int):
        self.values = np.empty(values)
        self.floats = np.empty(rows)
        self.ints = np.empty(rows, np.intp)


def segment_stats(matrices: list[np.ndarray], shapes: list[tuple[int, ...]], lengths: np.ndarray,
                  buffers: ChunkBuffers | None = None) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Stats of consecutive segments (episodes) of rows, for several numeric columns at once.

    ``matrices[f]`` is column f's values ``(rows, width)`` in its own dtype, ``lengths`` the
    segments' row counts. Returns per column ``{stat: (segments, *stat shape)}`` (float64;
    integer and boolean columns keep int64 min/max, as LeRobot writes them) and the values as
    ``(dimensions, rows)`` float64, sorted within each segment (for the value bins), in
    ``buffers`` if given. With fewer than two rows every quantile is the mean (LeRobot's rule)."""
    lengths = np.asarray(lengths, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.intp)
    rows = int(lengths.sum())
    widths = [m.shape[1] for m in matrices]
    dims = int(sum(widths))
    buffers = buffers or ChunkBuffers(dims * rows, rows)
    values = buffers.values[:dims * rows].reshape(dims, rows)
    d = 0
    for m, w in zip(matrices, widths):
        values[d:d + w] = m.T
        d += w
    mean = np.add.reduceat(values, starts, axis=1) / lengths
    # one dimension at a time, in the row buffers (the same sums as over the whole chunk)
    segment = buffers.ints[:rows]  # each row's segment
    segment.fill(0)
    np.add.at(segment, starts[1:], 1)
    np.cumsum(segment, out=segment)
    deviation = buffers.floats[:rows]
    squares = np.empty_like(mean)
    for d in range(dims):
        np.take(mean[d], segment, out=deviation)
        np.subtract(values[d], deviation, out=deviation)
        np.multiply(deviation, deviation, out=deviation)
        squares[d] = np.add.reduceat(deviation, starts)
    std = np.sqrt(squares / lengths)
    for a, n in zip(starts, lengths):
        values[:, a:a + n].sort(axis=1)
    lanes_first = (np.arange(dims)[:, None] * rows + starts[None, :]).ravel()  # (dims x segments)
    lanes_n = np.broadcast_to(lengths, (dims, len(lengths))).ravel()
    flat = values.reshape(-1)
    lo, hi = flat[lanes_first], flat[lanes_first + lanes_n - 1]
    quantiles = lerobot_quantiles_many(
        lanes_n, lo, hi,
        order_statistic=lambda lane, r: flat[lanes_first[lane] + r - 1],
        count_below=_count_below_sorted(flat, lanes_first, lanes_n),
    ).reshape(len(QUANTILES), dims, len(lengths))
    quantiles = np.where(lengths >= 2, quantiles, mean[None])
    lo, hi = lo.reshape(dims, -1), hi.reshape(dims, -1)
    out = []
    d = 0
    for m, w, shape in zip(matrices, widths, shapes):
        stat_shape = (len(lengths),) + _stat_shape(shape)
        part = slice(d, d + w)
        if m.dtype.kind in "iub":  # exact in the column's own type, whatever its magnitude
            low = np.minimum.reduceat(m, starts, axis=0).astype(np.int64)
            high = np.maximum.reduceat(m, starts, axis=0).astype(np.int64)
        else:
            low, high = lo[part].T, hi[part].T
        stats = {
            "min": low.reshape(stat_shape),
            "max": high.reshape(stat_shape),
            "mean": mean[part].T.reshape(stat_shape),
            "std": std[part].T.reshape(stat_shape),
            "count": lengths.reshape(-1, 1).copy(),
        }
        for key, q in zip(QUANTILE_KEYS, quantiles[:, part]):
            stats[key] = q.T.reshape(stat_shape)
        out.append(stats)
        d += w
    return out, values


def numeric_stats(values: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Stats of one episode's column, ``values`` shaped (rows, D), computed in float64."""
    (stats,), _ = segment_stats([values], [shape], np.array([len(values)]))
    return {k: v[0] for k, v in stats.items()}


def pixel_stats_many(level_counts: np.ndarray, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Camera stats of many episodes from per-channel counts of the 256 pixel levels of their
    sampled frames ``(episodes, 3, 256)``: values in [0, 1], each ``(episodes, 3, 1, 1)``,
    ``count`` = frames sampled (notes §1.4, §4.3). Exact in float64 (no uint8 arithmetic);
    quantiles from the §4.1 histogram over pixel levels."""
    counts = np.asarray(level_counts, np.float64)
    episodes, channels, n_levels = counts.shape
    levels = np.arange(n_levels, dtype=np.float64)
    total = counts.sum(axis=2)
    mean = (counts * levels).sum(axis=2) / total
    var = (counts * (levels - mean[..., None]) ** 2).sum(axis=2) / total
    present = counts > 0
    lo = np.argmax(present, axis=2).astype(np.float64)
    hi = (n_levels - 1 - np.argmax(present[..., ::-1], axis=2)).astype(np.float64)
    cum = np.cumsum(counts, axis=2).reshape(-1, n_levels)  # lanes = (episode, channel)

    def order_statistic(lane: np.ndarray, rank: np.ndarray) -> np.ndarray:
        out = np.empty(len(lane))
        for a in range(0, len(lane), 256):  # a slice of lanes at a time: all of a block's were ~5 MiB
            out[a:a + 256] = (cum[lane[a:a + 256]] < rank[a:a + 256, None]).sum(axis=1)
        return out

    def count_below(lane: np.ndarray, v: np.ndarray, _guess: np.ndarray) -> np.ndarray:
        top = np.ceil(v).astype(np.int64) - 1  # levels < v are those <= ceil(v) - 1
        return np.where(top < 0, 0.0, cum[lane, np.clip(top, 0, n_levels - 1)])

    quantiles = lerobot_quantiles_many(total.ravel(), lo.ravel(), hi.ravel(), order_statistic, count_below)
    quantiles = np.where(total.ravel() >= 2, quantiles, mean.ravel()).reshape(len(QUANTILES), episodes, channels)
    scale = float(n_levels - 1)  # 255: LeRobot divides uint8 stats by it
    shape = (episodes, channels, 1, 1)
    out = {
        "min": (lo / scale).reshape(shape),
        "max": (hi / scale).reshape(shape),
        "mean": (mean / scale).reshape(shape),
        "std": (np.sqrt(np.maximum(var, 0.0)) / scale).reshape(shape),
        "count": np.asarray(frames, np.int64).reshape(-1, 1),
    }
    for key, q in zip(QUANTILE_KEYS, quantiles):
        out[key] = (q / scale).reshape(shape)
    return out


def pixel_stats(level_counts: np.ndarray, frames: int) -> dict[str, np.ndarray]:
    """:func:`pixel_stats_many` of one episode: shapes (3, 1, 1), ``count`` (1,)."""
    return {k: v[0] for k, v in pixel_stats_many(np.asarray(level_counts)[None], np.array([frames])).items()}


# --- value bins: mergeable, exact-membership histograms for the dataset's quantiles


def grid_exponent(value_range, magnitude):
    """``k`` of the power-of-two grid (bins ``[i·2^k, (i+1)·2^k)``) for values spanning
    ``value_range`` with largest absolute value ``magnitude``: the largest ``2^k`` that is at most
    one histogram bin (``value_range / HISTOGRAM_BINS``), but never finer than float64 can index
    exactly (``magnitude / 2^k < 2^52``). Monotonic in both arguments, so a group's grid is
    never coarser than the dataset's and its bins nest inside the dataset's bins. Works on
    scalars (returns an int) and arrays."""
    _, e = np.frexp(np.asarray(value_range, np.float64) / HISTOGRAM_BINS)
    _, e_mag = np.frexp(np.asarray(magnitude, np.float64))
    k = np.maximum(e.astype(np.int64) - 1, e_mag.astype(np.int64) - _FLOAT64_MANTISSA_BITS)
    return int(k) if k.ndim == 0 else k


def grid_layout(lo, hi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(k, base, size)`` of the grids for values in ``[lo, hi]`` (arrays, or scalars as 0-d
    arrays): the exponent (:func:`grid_exponent`; 0 for a constant), the index of the first bin
    and the number of bins. GridBins and MergedBins lay out with it, so that a group's bins nest
    in the dataset's."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    k = np.where(hi > lo, grid_exponent(hi - lo, np.maximum(np.abs(lo), np.abs(hi))), 0)
    base = np.floor(np.ldexp(lo, -k))
    size = (np.floor(np.ldexp(hi, -k)) - base).astype(np.int64) + 1
    return k, base, size


def value_bins(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(count, smallest, largest)`` per non-empty grid bin of one dimension's values."""
    bins = GridBins()
    bins.add(np.asarray(values, np.float64)[None, :])
    count, vmin, vmax, _ = bins.bins()
    return count, vmin, vmax


class GridBins:
    """Value bins of several dimensions, each on the power-of-two grid of its own range
    (:func:`grid_exponent`; one bin while it is constant), filled chunk by chunk.

    Dense per dimension: a row of GRID_BINS_CAPACITY bins each, allocated once and reused (by
    :meth:`clear` too): columns such as ``index`` widen with every chunk, and new arrays for
    their bins each time fragmented the heap (RSS crept up chunk after chunk). When a chunk
    widens a dimension's range its bins are laid out anew and the old ones moved into the
    (coarser or equal) new ones, which contain them; so the result equals binning all values
    at once on the final grid."""

    def __init__(self):
        self.lo: np.ndarray | None = None
        self.count: np.ndarray | None = None  # (dimensions, capacity); a row's first size[d] in use

    def clear(self) -> None:
        """Empty, for other values (keeping the arrays)."""
        self.lo = None

    def _layout(self, dims: np.ndarray) -> None:
        """Grids for the ranges ``lo``..``hi`` of dimensions ``dims``, with empty bins."""
        k, base, size = grid_layout(self.lo[dims], self.hi[dims])
        self.k[dims], self.base[dims], self.size[dims] = k, base, size
        if size.max() > self.count.shape[1]:  # not expected (see GRID_BINS_CAPACITY)
            capacity = int(size.max())
            for name, fill in (("count", 0), ("vmin", np.inf), ("vmax", -np.inf)):
                old = getattr(self, name)
                grown = np.full((len(old), capacity), fill, old.dtype)
                grown[:, :old.shape[1]] = old
                setattr(self, name, grown)
        self.count[dims] = 0
        self.vmin[dims] = np.inf
        self.vmax[dims] = -np.inf

    def _cells(self, values: np.ndarray, d: int, buffers: ChunkBuffers | None = None) -> np.ndarray:
        """The bin of each value of dimension ``d`` (in ``buffers`` if given)."""
        buffers = buffers or ChunkBuffers(0, len(values))
        cell = buffers.floats[:len(values)]
        k = self.k[d]
        # x·2^-k rounds exactly as ldexp(x, -k) (one correctly rounded operation), ~5x faster
        if np.abs(self.k).max() < 1000:
            np.multiply(values, np.ldexp(1.0, -k), out=cell)
        else:
            np.ldexp(values, -k, out=cell)
        np.floor(cell, out=cell)
        return np.subtract(cell, self.base[d], out=buffers.ints[:len(values)], casting="unsafe")

    def _filled(self, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        used = slice(0, self.size[d])
        filled = self.count[d, used] > 0
        return self.count[d, used][filled], self.vmin[d, used][filled], self.vmax[d, used][filled]

    def add(self, values: np.ndarray, buffers: ChunkBuffers | None = None) -> None:
        """Add ``values`` shaped (dimensions, n); ``buffers`` (of n rows or more) for temporaries."""
        lo, hi = values.min(axis=1), values.max(axis=1)
        dims = len(values)
        if self.lo is None:
            if self.count is None or len(self.count) != dims:
                self.count = np.zeros((dims, GRID_BINS_CAPACITY), np.int64)
                self.vmin = np.full((dims, GRID_BINS_CAPACITY), np.inf)
                self.vmax = np.full((dims, GRID_BINS_CAPACITY), -np.inf)
            self.lo, self.hi = lo, hi
            self.k, self.base, self.size = np.zeros(dims, np.int64), np.zeros(dims), np.zeros(dims, np.int64)
            self._layout(np.arange(dims))
        else:
            wider = np.flatnonzero((lo < self.lo) | (hi > self.hi))
            if len(wider):
                old = [self._filled(d) for d in wider.tolist()]
                self.lo, self.hi = np.minimum(lo, self.lo), np.maximum(hi, self.hi)
                self._layout(wider)
                for d, (count, vmin, vmax) in zip(wider.tolist(), old):
                    cell = self._cells(vmin, d)
                    np.add.at(self.count[d], cell, count)
                    np.minimum.at(self.vmin[d], cell, vmin)
                    np.maximum.at(self.vmax[d], cell, vmax)
        buffers = buffers or ChunkBuffers(0, values.shape[1])
        for d, row in enumerate(values):  # a row at a time, in the row buffers
            cell = self._cells(row, d, buffers)
            self.count[d] += np.bincount(cell, minlength=self.count.shape[1])  # one size: no new holes
            np.minimum.at(self.vmin[d], cell, row)
            np.maximum.at(self.vmax[d], cell, row)

    def bins(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(count, smallest, largest, offsets)`` of the non-empty bins, dimension d's at
        ``offsets[d]:offsets[d + 1]``."""
        filled = [self.count[d, :self.size[d]] > 0 for d in range(len(self.lo))]
        offsets = np.concatenate([[0], np.cumsum([np.count_nonzero(f) for f in filled])]).astype(np.int64)
        out = [np.empty(offsets[-1], a.dtype) for a in (self.count, self.vmin, self.vmax)]
        for d, f in enumerate(filled):  # straight into the results: no copies per dimension to join
            for a, o in zip((self.count, self.vmin, self.vmax), out):
                np.compress(f, a[d, :len(f)], out=o[offsets[d]:offsets[d + 1]])
        return tuple(out) + (offsets,)


class MergedBins:
    """One dimension's value bins merged over groups on the dataset's grid.

    Every bin keeps its count and its exact smallest and largest value; an order statistic is
    read by spreading a bin's values evenly between those two. Both the estimate and the true
    value lie in the same bin, so each is off by less than the bin's width, ``2^k <= (max −
    min) / HISTOGRAM_BINS`` (or, for a dimension whose range is below ~1e-12 of its magnitude,
    about two float64 ulps of its largest value); bins holding one distinct value are exact."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = float(lo), float(hi)
        k, base, size = grid_layout(self.lo, self.hi)
        self.k, self.base, size = int(k), float(base), int(size)
        self.count = np.zeros(size, np.int64)
        self.vmin = np.full(size, np.inf)
        self.vmax = np.full(size, -np.inf)

    def add(self, count: np.ndarray, vmin: np.ndarray, vmax: np.ndarray) -> None:
        if self.hi > self.lo:
            i = (np.floor(np.ldexp(vmin, -self.k)) - self.base).astype(np.int64)
            j = (np.floor(np.ldexp(vmax, -self.k)) - self.base).astype(np.int64)
            if len(i) and (not np.array_equal(i, j) or i.min() < 0 or i.max() >= len(self.count)):
                raise OutputError("value bins do not nest in the dataset grid (stale stats cache?)")
        else:
            i = np.zeros(len(count), np.int64)
        np.add.at(self.count, i, count)
        np.minimum.at(self.vmin, i, vmin)
        np.maximum.at(self.vmax, i, vmax)

    def quantiles(self, quantiles=QUANTILES) -> np.ndarray:
        """Linear-interpolation quantiles (numpy's default, DuckDB's quantile_cont):
        ``x[floor(h)] + frac(h)·(x[floor(h)+1] − x[floor(h)])`` with ``h = (N − 1)·q``."""
        present = self.count > 0
        count, vmin, vmax = self.count[present], self.vmin[present], self.vmax[present]
        cum = np.cumsum(count)
        n = int(cum[-1])

        def order_statistic(r: int) -> float:
            b = int(np.searchsorted(cum, r, side="right"))
            if count[b] == 1:
                return float(vmin[b])
            j = r - (cum[b] - count[b])
            return float(vmin[b] + (vmax[b] - vmin[b]) * j / (count[b] - 1))

        out = np.empty(len(quantiles))
        for m, q in enumerate(quantiles):
            h = (n - 1) * q
            r = int(np.floor(h))
            value = order_statistic(r)
            if h > r and r + 1 < n:
                value += (h - r) * (order_statistic(r + 1) - value)
            out[m] = value
        return out


# --- per-episode computation, cached by source fingerprint


def _config_key(rec: Recording, kinds: dict[str, str]) -> str:
    """Everything besides the episode's own files that its cached result depends on."""
    spec = {
        "algorithm": STATS_ALGORITHM, "bins": HISTOGRAM_BINS, "quantiles": list(QUANTILES), "fps": rec.fps,
        "features": [[n, k, rec.features[n].dtype, list(rec.features[n].shape)] for n, k in kinds.items()],
    }
    return _digest(spec)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Every array of a cache file, or None when it is missing or unreadable (then recomputed)."""
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


class EpisodeStatsArrays:
    """Every episode's stats: one array per (feature, stat) with a leading episode axis, in
    feature order (info.json) and stat order (ALL_STAT_KEYS). Small: ~230 numbers per episode."""

    def __init__(self, features: list[str], episodes: int):
        self.features = features
        self.episodes = episodes
        self.arrays: dict[tuple[str, str], np.ndarray] = {}

    def put(self, feature: str, rows: np.ndarray | slice, stats: dict[str, np.ndarray]) -> None:
        for stat, values in stats.items():
            key = (feature, stat)
            held = self.arrays.get(key)
            if held is None:
                held = self.arrays[key] = np.zeros((self.episodes,) + values.shape[1:], values.dtype)
            elif np.result_type(held, values) != held.dtype:
                held = self.arrays[key] = held.astype(np.result_type(held, values))
            held[rows] = values

    def rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {f"stats/{f}/{s}": a[rows] for (f, s), a in self.arrays.items()}

    def table(self, episode_indices: list[int]) -> pa.Table:
        """The ``episode_index`` + ``stats/<feature>/<stat>`` table (as :func:`stats_table`)."""
        columns: dict[str, pa.Array] = {"episode_index": int64_array(episode_indices)}
        for feature in self.features:
            for stat in ALL_STAT_KEYS:
                values = self.arrays[(feature, stat)]
                integral = values.dtype.kind in "iub"
                columns[stats_column(feature, stat)] = nested_list_array(values, pa.int64() if integral else pa.float64())
        return pa.table(columns)


def numeric_chunks(lengths: list[int], dims: int, first: int = 0) -> list[range]:
    """Consecutive episodes (positions from ``first``) read and computed together: up to
    NUMERIC_CHUNK_VALUES values each."""
    chunks, start, values = [], 0, 0
    for position, length in enumerate(lengths):
        if position > start and values + length * dims > NUMERIC_CHUNK_VALUES:
            chunks.append(range(first + start, first + position))
            start, values = position, 0
        values += length * dims
    if lengths:
        chunks.append(range(first + start, first + len(lengths)))
    return chunks


def _chunk_matrices(rec: Recording, positions: range, tables: list[pa.Table], numeric: list[str]) -> list[np.ndarray]:
    """Each numeric column of consecutive episodes as one ``(rows, width)`` matrix."""
    try:
        table = pa.concat_tables(tables)
        return [column_matrix(table.column(f), rec.features[f].shape, rec.episodes[positions[0]].data_path, f)
                for f in numeric]
    except (pa.ArrowInvalid, RecordingError):
        pass  # differing schemas, or a fault to be named with its own file and row: one by one
    per_episode = [
        [column_matrix(t.column(f), rec.features[f].shape, rec.episodes[p].data_path, f) for f in numeric]
        for p, t in zip(positions, tables)
    ]
    return [np.concatenate([m[i] for m in per_episode]) for i in range(len(numeric))]


def _read_chunks(rec: Recording, chunks: list[range], numeric: list[str]) -> Iterator[tuple[range, list[pa.Table]]]:
    """Each chunk's episode tables (numeric columns), the next chunk read ahead by threads."""
    if not chunks:
        return
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="episode-stats-read") as pool:
        def submit(chunk: range) -> list:
            return [pool.submit(read_episode_data, rec, p, numeric) for p in chunk]

        ahead = submit(chunks[0])
        for i, chunk in enumerate(chunks):
            current, ahead = ahead, (submit(chunks[i + 1]) if i + 1 < len(chunks) else [])
            tables = [[f.result() for f in current]]
            del current  # its futures, and this frame, must not keep the tables once the caller drops them
            yield chunk, tables.pop()


class _CameraBlocks:
    """Camera results (pixel-level counts per episode and camera) gathered per block of
    CAMERA_BLOCK_EPISODES positions and kept in ``camera-<block>-<members>.npz``: an episode whose
    fingerprint did not change reuses its counts from there. Results arrive in job order; a block
    is written as soon as it is complete, so memory holds about one block."""

    def __init__(self, cache: Path, config: str, cameras: list[str], keys: list[tuple[int, str]],
                 computed: np.ndarray, old: dict[tuple[int, str], tuple[Path, int]], store: EpisodeStatsArrays):
        self.cache, self.config, self.cameras, self.keys = cache, config, cameras, keys
        self.computed, self.old, self.store = computed, old, store
        blocks = -(-len(keys) // CAMERA_BLOCK_EPISODES)
        self.expected = [int(computed[self._members(b)].sum()) * len(cameras) for b in range(blocks)]
        self.received = [0] * blocks
        self.levels: dict[int, np.ndarray] = {}  # block -> (members, cameras, 3, 256) counts
        self.frames: dict[int, np.ndarray] = {}  # block -> (members, cameras) frames sampled
        self.totals = np.zeros((len(cameras), 3, 256), np.int64)
        self.files: list[str] = []
        self.frames_decoded = 0
        self.frames_sampled = 0
        self._next = 0

    def _members(self, b: int) -> slice:
        return slice(b * CAMERA_BLOCK_EPISODES, min((b + 1) * CAMERA_BLOCK_EPISODES, len(self.keys)))

    def add(self, position: int, camera: int, sample) -> None:
        b, row = divmod(position, CAMERA_BLOCK_EPISODES)
        if b not in self.levels:
            size = len(range(len(self.keys))[self._members(b)])
            self.levels[b] = np.zeros((size, len(self.cameras), 3, 256), np.uint32)
            self.frames[b] = np.zeros((size, len(self.cameras)), np.int64)
        self.levels[b][row, camera] = sample.level_counts
        self.frames[b][row, camera] = sample.frames
        self.received[b] += 1
        self.frames_decoded += sample.decode.decoded
        self.frames_sampled += sample.frames
        self.advance()

    def advance(self) -> None:
        """Write every block whose results are all in (in order)."""
        while self._next < len(self.expected) and self.received[self._next] == self.expected[self._next]:
            self._finish(self._next)
            self._next += 1

    def _finish(self, b: int) -> None:
        members = self._members(b)
        positions = np.arange(len(self.keys))[members]
        keys = self.keys[members]
        fresh = self.computed[members]
        name = f"camera-{b:05d}-{_digest([self.config, keys])}.npz"
        path = self.cache / name
        stored = None if fresh.any() else _load_npz(path)
        if stored is not None:  # nothing changed in this block
            block_total = np.stack([stored[f"total/{c}"] for c in self.cameras])
        else:
            levels = self.levels.pop(b, None)
            frames = self.frames.pop(b, None)
            if levels is None:
                levels = np.zeros((len(keys), len(self.cameras), 3, 256), np.uint32)
            for row in np.flatnonzero(~fresh):
                old_path, old_row = self.old[keys[row]]
                with np.load(old_path) as z:
                    for c, camera in enumerate(self.cameras):
                        levels[row, c] = z[f"levels/{camera}"][old_row]
            rows = np.flatnonzero(fresh)
            if len(rows):
                for c, camera in enumerate(self.cameras):
                    self.store.put(camera, positions[rows], pixel_stats_many(levels[rows, c], frames[rows, c]))
            block_total = levels.sum(axis=0, dtype=np.int64)
            arrays = {"episode_index": np.array([k[0] for k in keys], np.int64),
                      "fingerprint": np.array([k[1] for k in keys])}
            for c, camera in enumerate(self.cameras):
                arrays[f"levels/{camera}"] = levels[:, c]
                arrays[f"total/{camera}"] = block_total[c]
            _save_npz(path, arrays)
        self.totals += block_total
        self.files.append(name)

    def finish(self) -> None:
        self.advance()
        if self._next != len(self.expected):
            raise OutputError("camera statistics are missing results (internal error)")


def _reusable_camera_levels(cache: Path, cameras: list[str]) -> dict[tuple[int, str], tuple[Path, int]]:
    """(episode index, fingerprint) -> (camera cache file, row) for counts kept by earlier runs."""
    found: dict[tuple[int, str], tuple[Path, int]] = {}
    for path in sorted(cache.glob("camera-*.npz")):
        try:
            with np.load(path) as z:
                if not all(f"levels/{c}" in z.files for c in cameras):
                    continue
                for row, key in enumerate(zip(z["episode_index"].tolist(), z["fingerprint"].tolist())):
                    found[key] = (path, row)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            continue  # unreadable: its episodes are computed again
    return found


def _camera_counting(rec: Recording, cameras: list[str], computed: np.ndarray, threads: int):
    """The level counting of every camera of the episodes to compute, started now (helpers
    begin at once), or a null context without cameras (then PyAV is not even imported)."""
    if not cameras:
        return contextlib.nullcontext()
    from dorobot_assets.lib.camera_stats import LevelCounting, level_job

    class Jobs:  # each episode's cameras in turn, made when sent (all at once: ~9 MiB at 2000 episodes)
        positions = np.flatnonzero(computed)

        def __len__(self) -> int:
            return len(self.positions) * len(cameras)

        def __getitem__(self, i: int):
            p, c = divmod(i, len(cameras))
            ep = rec.episodes[int(self.positions[p])]
            return level_job(ep.video_paths[cameras[c]], ep.length, position=int(self.positions[p]), camera=c)

    return LevelCounting(Jobs(), threads)


def compute_episode_stats(rec: Recording, work_dir: Path, *, workers: int | None = None) -> tuple[pa.Table, dict]:
    """Recomputed per-episode stats as a ``stats/<feature>/<stat>`` table, and run facts.

    Cameras' sampled frames are decoded and counted on ``workers`` threads (default: one per
    core) in helper processes, which start first and run while this process does the numeric
    columns: read a chunk of episodes at a time (the next chunk read ahead by threads), every
    column and episode of a chunk computed at once. ``workers=1`` decodes in this process.

    Results are kept under ``work_dir/episode_stats``: every episode's stats keyed by its
    source fingerprint (path, size and mtime of its data, video and audio files) and the stats
    configuration, its cameras' pixel-level counts, and the value bins of each group of
    NUMERIC_GROUP_EPISODES episodes keyed by its members. A recording that gained episodes
    computes only the new ones; a changed episode only itself (the data of its group is read
    again for the bins). Memory holds a chunk of numeric values and a block of camera counts,
    never the recording."""
    kinds = stats_features(rec)
    numeric = [f for f, k in kinds.items() if k == NUMERIC]
    cameras = [f for f, k in kinds.items() if k == CAMERA]
    for ep in rec.episodes:
        if ep.length == 0:
            raise RecordingError(
                "empty_episode", ep.data_path,
                f"episode {ep.index} has no rows: statistics are undefined; use stats mode 'copy'",
            )
    cache = Path(work_dir) / STATS_CACHE_DIR
    cache.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(cache)
    config = _config_key(rec, kinds)
    keys = [(ep.index, rec.episode_fingerprint(p)) for p, ep in enumerate(rec.episodes)]
    lengths = np.array([ep.length for ep in rec.episodes], np.int64)
    store = EpisodeStatsArrays(list(kinds), len(keys))
    computed = np.ones(len(keys), bool)
    episodes_name = f"episodes-{config}.npz"
    previous = _load_npz(cache / episodes_name)
    old_levels = _reusable_camera_levels(cache, cameras) if cameras and previous is not None else {}
    if previous is not None and all(f"stats/{f}/{s}" in previous for f in kinds for s in ALL_STAT_KEYS):
        row_of = {key: r for r, key in enumerate(zip(previous["episode_index"].tolist(),
                                                      previous["fingerprint"].tolist()))}
        reused = [(p, row_of[key]) for p, key in enumerate(keys)
                  if key in row_of and (not cameras or key in old_levels)]
        if reused:
            positions, rows = (np.array(x) for x in zip(*reused))
            computed[positions] = False
            for f in kinds:
                store.put(f, positions, {s: previous[f"stats/{f}/{s}"][rows] for s in ALL_STAT_KEYS})
    del previous

    shapes = [rec.features[f].shape for f in numeric]
    dims = int(sum(np.prod(_stat_shape(s)) for s in shapes))
    groups = [range(g, min(g + NUMERIC_GROUP_EPISODES, len(keys))) for g in range(0, len(keys), NUMERIC_GROUP_EPISODES)]
    numeric_files = [f"numeric-{_digest([config, keys[g.start:g.stop]])}.npz" for g in groups] if numeric else []
    chunks: list[range] = []  # of the groups whose bins must be made (again)
    group_end: dict[int, str] = {}  # last position of such a group -> its file
    for g, name in zip(groups, numeric_files):
        if computed[g.start:g.stop].any() or not (cache / name).exists():
            chunks += numeric_chunks(lengths[g.start:g.stop].tolist(), dims, g.start)
            group_end[g.stop - 1] = name

    camera_blocks = _CameraBlocks(cache, config, cameras, keys, computed, old_levels, store) if cameras else None
    with _camera_counting(rec, cameras, computed, workers or DEFAULT_STATS_WORKERS) as counting:

        def take_camera_results(wait: bool) -> None:
            if counting is not None:
                for job, sample in counting.outcomes(wait):
                    camera_blocks.add(job.position, job.camera, sample)

        bins = GridBins()
        rows = max((int(lengths[c.start:c.stop].sum()) for c in chunks), default=0)
        buffers = ChunkBuffers(rows * dims, rows)
        for chunk, tables in _read_chunks(rec, chunks, numeric):
            matrices = _chunk_matrices(rec, chunk, tables, numeric)
            del tables
            stats, values = segment_stats(matrices, shapes, lengths[chunk.start:chunk.stop], buffers)
            del matrices
            fresh = computed[chunk.start:chunk.stop]
            for f, feature_stats in zip(numeric, stats):
                store.put(f, np.arange(chunk.start, chunk.stop)[fresh], {k: v[fresh] for k, v in feature_stats.items()})
            bins.add(values, buffers)
            del values
            if chunk.stop - 1 in group_end:
                _save_npz(cache / group_end[chunk.stop - 1], dict(zip(("count", "vmin", "vmax", "offsets"), bins.bins())))
                bins.clear()
            take_camera_results(wait=False)
        take_camera_results(wait=True)
        helpers = counting.helper_processes if counting is not None else 0
    if camera_blocks is not None:
        camera_blocks.finish()

    _save_npz(cache / episodes_name, {
        "episode_index": np.array([k[0] for k in keys], np.int64),
        "fingerprint": np.array([k[1] for k in keys]),
        **store.rows(slice(None)),
    })
    extent = {
        "numeric_min": np.concatenate([store.arrays[(f, "min")].astype(np.float64).min(axis=0).ravel()
                                       for f in numeric]).tolist() if numeric else [],
        "numeric_max": np.concatenate([store.arrays[(f, "max")].astype(np.float64).max(axis=0).ravel()
                                       for f in numeric]).tolist() if numeric else [],
    }
    index = {
        "config": config,
        "features": {f: {"kind": k, "shape": list(store.arrays[(f, "mean")].shape[1:])} for f, k in kinds.items()},
        "episodes_file": episodes_name,
        "numeric_files": numeric_files,
        **extent,
        "camera_files": camera_blocks.files if camera_blocks else [],
        "camera_levels": {c: camera_blocks.totals[i].tolist() for i, c in enumerate(cameras)} if cameras else {},
    }
    keep = {episodes_name, *numeric_files, *index["camera_files"]}
    for old in cache.glob("*.npz"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    write_json_atomic(cache / STATS_INDEX_FILE, index, indent=1)
    table = store.table([k[0] for k in keys])
    new = np.flatnonzero(computed)
    extra = {
        "episodes_computed": int(len(new)),
        "episodes_reused": int(len(keys) - len(new)),
        "computed_episodes": [keys[p][0] for p in new.tolist()],
        "numeric_groups_read": len(group_end),
        "frames_decoded": camera_blocks.frames_decoded if camera_blocks else 0,
        "frames_sampled": camera_blocks.frames_sampled if camera_blocks else 0,
        "stats_helper_processes": helpers,
    }
    release_freed_memory()
    return table, extra


def dataset_quantiles(work_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """The dataset's q01..q99 per feature and dimension, ``{feature: {"q01": array, ...}}`` shaped
    like the feature's ``mean``, from the value bins of the last :func:`compute_episode_stats`
    (one pass over the numeric groups' files, no data re-read).

    Error bound: each quantile is within one histogram bin of the exact linear-interpolation
    quantile (numpy's default, DuckDB's ``quantile_cont``) over all frames, i.e.
    ``|q − exact| < (max − min) / HISTOGRAM_BINS`` of that dimension (see :class:`MergedBins`;
    exact where the needed values sit alone in their bin, e.g. pixel levels and integer
    columns with few distinct values). Cameras: over all sampled pixels of all episodes."""
    cache = Path(work_dir) / STATS_CACHE_DIR
    index_path = cache / STATS_INDEX_FILE
    if not index_path.exists():
        raise OutputError(f"{index_path}: no per-episode stats; materialize episode_stats in recompute mode")
    index = json.loads(index_path.read_text())
    features = index["features"]
    numeric = [f for f, spec in features.items() if spec["kind"] == NUMERIC]
    merged = [MergedBins(a, b) for a, b in zip(index["numeric_min"], index["numeric_max"])]
    for name in index["numeric_files"]:
        bins = _load_npz(cache / name)
        if bins is None:
            raise OutputError(f"{cache / name}: value bins are missing or unreadable; materialize episode_stats again")
        offsets = bins["offsets"]
        for d, dim in enumerate(merged):
            part = slice(int(offsets[d]), int(offsets[d + 1]))
            dim.add(bins["count"][part], bins["vmin"][part], bins["vmax"][part])
    numeric_q = np.stack([m.quantiles() for m in merged], axis=1) if merged else np.zeros((len(QUANTILES), 0))
    out: dict[str, dict[str, np.ndarray]] = {}
    d = 0
    for f, spec in features.items():
        shape = tuple(spec["shape"])
        if f in numeric:
            width = int(np.prod(shape))
            q = numeric_q[:, d:d + width]
            d += width
        else:
            channels = []
            for counts in np.asarray(index["camera_levels"][f], np.int64):
                present = np.flatnonzero(counts)
                level = present / float(len(counts) - 1)  # in [0, 1], as the camera stats
                dim = MergedBins(level[0], level[-1])
                dim.add(counts[present], level, level)
                channels.append(dim.quantiles())
            q = np.stack(channels, axis=1)
        out[f] = {key: q[j].reshape(shape) for j, key in enumerate(QUANTILE_KEYS)}
    return out
