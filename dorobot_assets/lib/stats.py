"""Per-episode statistics as ``stats/<feature>/<stat>`` columns, and meta/stats.json.

Two modes (``ConversionSettings.stats``): ``copy`` takes the v2.1 per-episode stats as they are
(the official converter's behaviour, no quantiles); ``recompute`` computes them from the data,
with quantiles (see the recompute section below). Aggregation (notes §4.4) uses exact pooled
formulas: ``N = Σ n_i``, ``mean = Σ n_i·mean_i / N``, ``var = Σ n_i·(std_i² + (mean_i − mean)²) / N``,
element-wise min/max; quantiles are the dataset's own (:func:`dataset_quantiles`), not a mean or an
envelope of per-episode quantiles (LeRobot #3804/#4156).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dorobot_assets.lib.errors import OutputError, RecordingError
from dorobot_assets.lib.fsutil import atomic_path, remove_stale_temp_files, write_json_atomic
from dorobot_assets.lib.v21 import EPISODES_STATS_FILE, INFO_FILE, Recording, read_episode_data
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
    columns: dict[str, pa.Array] = {"episode_index": pa.array(episode_indices, pa.int64())}
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
        columns[stats_column(feature, stat)] = pa.array([v.astype(cast).tolist() for v in values], typ)
    return pa.table(columns)


def copy_source_stats(rec: Recording) -> pa.Table:
    """v2.1 per-episode stats as they are (the official converter's behaviour; no quantiles)."""
    if rec.episodes_stats is None:
        raise RecordingError(
            "stats_missing", rec.root / EPISODES_STATS_FILE,
            f"a {rec.version} recording has no per-episode stats to copy; use stats mode 'recompute'",
        )
    per_episode = []
    for e, stats in enumerate(rec.episodes_stats):
        ep = {}
        for feature, fstats in stats.items():
            if feature in rec.dropped_features:
                continue
            if feature not in rec.features:
                raise RecordingError(
                    "stats_mismatch", rec.root / EPISODES_STATS_FILE,
                    f"episode {e} has stats for {feature!r}, which info.json does not declare",
                )
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
        out.setdefault(feature, {})[stat] = np.asarray(table.column(name).to_pylist())
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
# histogram algorithm (notes §4.1) so the per-episode numbers mean what LeRobot's mean. Beside
# them each episode keeps "value bins" in the work folder: counts with the exact smallest and
# largest value per bin of a power-of-two grid. Grids of different episodes nest, so the
# dataset's quantiles come from merging them (dataset_quantiles) without re-reading the data.

HISTOGRAM_BINS = 5000  # per dimension, as LeRobot's RunningQuantileStats (notes §4.1)
EDGE_PADDING = 1e-10  # LeRobot widens the first batch's range by this much on each side
STATS_ALGORITHM = "1"  # bump when per-episode results change: cached episodes are then recomputed
STATS_CACHE_DIR = "episode_stats"
STATS_INDEX_FILE = "index.json"
NUMERIC = "numeric"
CAMERA = "camera"
_FLOAT64_MANTISSA_BITS = 52


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
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            if lengths.min() != lengths.max():
                raise RecordingError(
                    "bad_vector_length", path,
                    f"column {name!r} has vectors of {lengths.min()} to {lengths.max()} values; "
                    f"info.json shape is {list(shape)}",
                )
        arr = arr.flatten()
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
    values = arr.to_numpy(zero_copy_only=False).reshape(rows, width)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values)
        if bad.any():
            row, dim = (int(v[0]) for v in np.nonzero(bad))
            raise RecordingError(
                "non_finite_values", path,
                f"column {name!r} row {row} dimension {dim} is {values[row, dim]}: statistics are "
                "undefined; use stats mode 'copy' to keep the source's",
            )
    return values


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
    [min, max]: LeRobot's padded outer edges are not values of the data."""
    lo, hi = float(values.min()), float(values.max())
    edges = np.linspace(lo - EDGE_PADDING, hi + EDGE_PADDING, HISTOGRAM_BINS + 1)
    hist, _ = np.histogram(values, bins=edges, weights=weights)
    return np.clip(histogram_quantiles(hist, edges), lo, hi)


def numeric_stats(values: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Stats of one episode's column, ``values`` shaped (rows, D), computed in float64.

    Integer and boolean columns keep integer min/max (as LeRobot writes them). With fewer than
    two rows every quantile is the mean (LeRobot's rule)."""
    x = values.astype(np.float64)
    rows = len(x)
    integral = values.dtype.kind in "iub"
    mean = x.mean(axis=0)
    if rows >= 2:
        quantiles = np.stack([lerobot_quantiles(x[:, d]) for d in range(x.shape[1])], axis=1)
    else:
        quantiles = np.tile(mean, (len(QUANTILES), 1))
    stat_shape = _stat_shape(shape)
    lo, hi = values.min(axis=0), values.max(axis=0)
    out = {
        "min": (lo.astype(np.int64) if integral else lo.astype(np.float64)).reshape(stat_shape),
        "max": (hi.astype(np.int64) if integral else hi.astype(np.float64)).reshape(stat_shape),
        "mean": mean.reshape(stat_shape),
        "std": x.std(axis=0).reshape(stat_shape),
        "count": np.array([rows], np.int64),
    }
    for key, q in zip(QUANTILE_KEYS, quantiles):
        out[key] = q.reshape(stat_shape)
    return out


def pixel_stats(level_counts: np.ndarray, frames: int) -> dict[str, np.ndarray]:
    """Camera stats from per-channel counts of the 256 pixel levels of the sampled frames:
    values in [0, 1], shape (3, 1, 1), ``count`` = frames sampled (notes §1.4, §4.3). Exact in
    float64 (no uint8 arithmetic); quantiles from the §4.1 histogram over pixel levels."""
    counts = np.asarray(level_counts, np.float64)
    channels, n_levels = counts.shape
    levels = np.arange(n_levels, dtype=np.float64)
    total = counts.sum(axis=1)
    mean = counts @ levels / total
    var = (counts * (levels[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    lo = np.array([np.flatnonzero(c)[0] for c in counts], np.float64)
    hi = np.array([np.flatnonzero(c)[-1] for c in counts], np.float64)
    quantiles = np.empty((len(QUANTILES), channels))
    for c in range(channels):
        present = np.flatnonzero(counts[c])
        if total[c] >= 2:
            quantiles[:, c] = lerobot_quantiles(levels[present], counts[c, present])
        else:
            quantiles[:, c] = mean[c]
    scale = float(n_levels - 1)  # 255: LeRobot divides uint8 stats by it
    shape = (channels, 1, 1)
    out = {
        "min": (lo / scale).reshape(shape),
        "max": (hi / scale).reshape(shape),
        "mean": (mean / scale).reshape(shape),
        "std": (np.sqrt(np.maximum(var, 0.0)) / scale).reshape(shape),
        "count": np.array([frames], np.int64),
    }
    for key, q in zip(QUANTILE_KEYS, quantiles):
        out[key] = (q / scale).reshape(shape)
    return out


# --- value bins: mergeable, exact-membership histograms for the dataset's quantiles


def grid_exponent(value_range: float, magnitude: float) -> int:
    """``k`` of the power-of-two grid (bins ``[i·2^k, (i+1)·2^k)``) for values spanning
    ``value_range`` with largest absolute value ``magnitude``: the largest ``2^k`` that is at most
    one histogram bin (``value_range / HISTOGRAM_BINS``), but never finer than float64 can index
    exactly (``magnitude / 2^k < 2^52``). Monotonic in both arguments, so an episode's grid is
    never coarser than the dataset's and its bins nest inside the dataset's bins."""
    _, e = np.frexp(value_range / HISTOGRAM_BINS)
    _, e_mag = np.frexp(magnitude)
    return max(int(e) - 1, int(e_mag) - _FLOAT64_MANTISSA_BITS)


def value_bins(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(count, smallest, largest)`` per non-empty grid bin of one dimension's values."""
    x = np.sort(np.asarray(values, np.float64))
    lo, hi = x[0], x[-1]
    if hi == lo:
        return np.array([len(x)], np.int64), x[:1], x[:1]
    k = grid_exponent(hi - lo, max(abs(lo), abs(hi)))
    idx = np.floor(np.ldexp(x, -k))
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    ends = np.r_[starts[1:], len(x)]
    return (ends - starts).astype(np.int64), x[starts], x[ends - 1]


def _bins_record(per_dim: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    dims = np.concatenate([np.full(len(c), d, np.int32) for d, (c, _, _) in enumerate(per_dim)])
    return {
        "dim": dims,
        "count": np.concatenate([c for c, _, _ in per_dim]),
        "vmin": np.concatenate([v for _, v, _ in per_dim]),
        "vmax": np.concatenate([v for _, _, v in per_dim]),
    }


def numeric_bins(values: np.ndarray) -> dict[str, np.ndarray]:
    return _bins_record([value_bins(values[:, d]) for d in range(values.shape[1])])


def pixel_bins(level_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Pixel levels are exact values: one point bin per level present, in [0, 1]."""
    scale = float(level_counts.shape[1] - 1)
    per_dim = []
    for c in level_counts:
        present = np.flatnonzero(c)
        v = present / scale
        per_dim.append((c[present].astype(np.int64), v, v))
    return _bins_record(per_dim)


class MergedBins:
    """One dimension's value bins merged over episodes on the dataset's grid.

    Every bin keeps its count and its exact smallest and largest value; an order statistic is
    read by spreading a bin's values evenly between those two. Both the estimate and the true
    value lie in the same bin, so each is off by less than the bin's width, ``2^k <= (max −
    min) / HISTOGRAM_BINS`` (or, for a dimension whose range is below ~1e-12 of its magnitude,
    about two float64 ulps of its largest value); bins holding one distinct value are exact."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = float(lo), float(hi)
        self.k = grid_exponent(self.hi - self.lo, max(abs(self.lo), abs(self.hi))) if hi > lo else 0
        self.base = np.floor(np.ldexp(self.lo, -self.k))
        size = int(np.floor(np.ldexp(self.hi, -self.k)) - self.base) + 1 if hi > lo else 1
        self.count = np.zeros(size, np.int64)
        self.vmin = np.full(size, np.inf)
        self.vmax = np.full(size, -np.inf)

    def add(self, count: np.ndarray, vmin: np.ndarray, vmax: np.ndarray) -> None:
        if self.hi > self.lo:
            i = (np.floor(np.ldexp(vmin, -self.k)) - self.base).astype(np.int64)
            j = (np.floor(np.ldexp(vmax, -self.k)) - self.base).astype(np.int64)
            if not np.array_equal(i, j) or i.min() < 0 or i.max() >= len(self.count):
                raise OutputError("per-episode value bins do not nest in the dataset grid (stale stats cache?)")
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
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def episode_stats_and_bins(rec: Recording, position: int, kinds: dict[str, str]) -> tuple[dict, dict]:
    """One episode's stats ``{feature: {stat: array}}`` and value bins ``{feature: record}``."""
    from dorobot_assets.lib.camera_stats import sampled_level_counts

    ep = rec.episodes[position]
    if ep.length == 0:
        raise RecordingError(
            "empty_episode", ep.data_path,
            f"episode {ep.index} has no rows: statistics are undefined; use stats mode 'copy'",
        )
    numeric = [name for name, kind in kinds.items() if kind == NUMERIC]
    table = read_episode_data(rec, position, numeric) if numeric else None
    stats: dict[str, dict[str, np.ndarray]] = {}
    bins: dict[str, dict[str, np.ndarray]] = {}
    for name, kind in kinds.items():
        if kind == NUMERIC:
            shape = rec.features[name].shape
            values = column_matrix(table.column(name), shape, ep.data_path, name)
            stats[name] = numeric_stats(values, shape)
            bins[name] = numeric_bins(values)
        else:
            sample = sampled_level_counts(ep.video_paths[name], ep.length)
            stats[name] = pixel_stats(sample.level_counts, sample.frames)
            bins[name] = pixel_bins(sample.level_counts)
    return stats, bins


def _save_episode(path: Path, stats: dict, bins: dict) -> None:
    arrays = {f"stats/{f}/{s}": v for f, fs in stats.items() for s, v in fs.items()}
    arrays.update({f"bins/{f}/{k}": v for f, rec in bins.items() for k, v in rec.items()})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _load_episode_stats(path: Path, kinds: dict[str, str]) -> dict[str, dict[str, np.ndarray]]:
    with np.load(path) as z:
        return {f: {s: z[f"stats/{f}/{s}"] for s in ALL_STAT_KEYS} for f in kinds}


def compute_episode_stats(rec: Recording, work_dir: Path) -> tuple[pa.Table, dict]:
    """Recomputed per-episode stats as a ``stats/<feature>/<stat>`` table, and run facts.

    Each episode's result (stats and value bins) is kept under ``work_dir/episode_stats``, named
    by its source fingerprint (path, size and mtime of its data, video and audio files) and the
    stats configuration, and reused while both are unchanged: a recording that gained episodes
    computes only the new ones. Memory holds one episode (and one decoded frame) at a time."""
    kinds = stats_features(rec)
    cache = Path(work_dir) / STATS_CACHE_DIR
    config = _config_key(rec, kinds)
    names: list[str] = []
    per_episode: list[dict] = []
    computed: list[int] = []
    for position, ep in enumerate(rec.episodes):
        name = f"episode_{ep.index:06d}-{rec.episode_fingerprint(position)}-{config}.npz"
        path = cache / name
        stats = None
        if path.exists():
            try:
                stats = _load_episode_stats(path, kinds)
            except (OSError, KeyError, ValueError, zipfile.BadZipFile):
                stats = None  # unreadable cache entry: recompute it
        if stats is None:
            stats, bins = episode_stats_and_bins(rec, position, kinds)
            _save_episode(path, stats, bins)
            computed.append(ep.index)
        names.append(name)
        per_episode.append(stats)
    keep = set(names)
    for old in cache.glob("*.npz"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    remove_stale_temp_files(cache)
    index = {
        "features": {
            f: {"kind": k, "shape": list(per_episode[0][f]["mean"].shape)} for f, k in kinds.items()
        },
        "episodes": names,
    }
    write_json_atomic(cache / STATS_INDEX_FILE, index, indent=1)
    table = stats_table([e.index for e in rec.episodes], per_episode)
    extra = {
        "episodes_computed": len(computed),
        "episodes_reused": len(rec.episodes) - len(computed),
        "computed_episodes": computed,
    }
    return table, extra


def dataset_quantiles(work_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """The dataset's q01..q99 per feature and dimension, ``{feature: {"q01": array, ...}}`` shaped
    like the feature's ``mean``, from the per-episode value bins of the last
    :func:`compute_episode_stats` (two passes over the cache files, no data re-read).

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
    files = [cache / name for name in index["episodes"]]
    lo = {f: None for f in features}
    hi = {f: None for f in features}
    for path in files:
        with np.load(path) as z:
            for f in features:
                mn = z[f"stats/{f}/min"].astype(np.float64).ravel()
                mx = z[f"stats/{f}/max"].astype(np.float64).ravel()
                lo[f] = mn if lo[f] is None else np.minimum(lo[f], mn)
                hi[f] = mx if hi[f] is None else np.maximum(hi[f], mx)
    merged = {f: [MergedBins(a, b) for a, b in zip(lo[f], hi[f])] for f in features}
    for path in files:
        with np.load(path) as z:
            for f, dims in merged.items():
                dim = z[f"bins/{f}/dim"]
                count, vmin, vmax = z[f"bins/{f}/count"], z[f"bins/{f}/vmin"], z[f"bins/{f}/vmax"]
                order = np.argsort(dim, kind="stable")
                splits = np.searchsorted(dim[order], np.arange(1, len(dims)))
                for d, sel in enumerate(np.split(order, splits)):
                    dims[d].add(count[sel], vmin[sel], vmax[sel])
    out: dict[str, dict[str, np.ndarray]] = {}
    for f, dims in merged.items():
        q = np.stack([m.quantiles() for m in dims], axis=1)  # (quantile, dim)
        shape = tuple(features[f]["shape"])
        out[f] = {key: q[j].reshape(shape) for j, key in enumerate(QUANTILE_KEYS)}
    return out
