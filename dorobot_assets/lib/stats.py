"""Per-episode statistics as ``stats/<feature>/<stat>`` columns, and meta/stats.json.

Aggregation (notes §4.4) uses exact pooled formulas: ``N = Σ n_i``, ``mean = Σ n_i·mean_i / N``,
``var = Σ n_i·(std_i² + (mean_i − mean)²) / N``, element-wise min/max.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.fsutil import write_json_atomic
from dorobot_assets.lib.v21 import EPISODES_STATS_FILE, Recording
from dorobot_assets.lib.v30 import QUANTILE_KEYS, STAT_KEYS, STATS_PATH

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


def compute_episode_stats(rec: Recording, work_dir: Path) -> tuple[pa.Table, dict]:
    raise NotImplementedError("stats recompute lands with the statistics issue")


def dataset_quantiles(work_dir: Path):
    raise NotImplementedError("stats recompute lands with the statistics issue")
