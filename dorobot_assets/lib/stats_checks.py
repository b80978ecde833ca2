"""Checks of recomputed statistics (issue: statistics), registered with lib/validate.py.

- ``stats_quantiles_exact`` (error): every numeric feature's q01..q99 in meta/stats.json is within
  one histogram bin of DuckDB's exact ``quantile_cont`` over the data files. Decided from
  streaming counts (how many values lie below each bound), not by sorting every value.
- ``stats_match_source`` (warning): where the source recording has v2.1 per-episode stats, the
  recomputed min/max/mean/std agree with them; differences point at corrupted or hand-edited
  recordings, so the episodes and features are named.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from dorobot_assets.lib.arrow import column_numpy, nested_list_numpy
from dorobot_assets.lib.stats import HISTOGRAM_BINS, STATS_BLOCK_EPISODES, parse_stats_lines
from dorobot_assets.lib.v21 import EPISODES_STATS_FILE, NUMERIC_DTYPES
from dorobot_assets.lib.v30 import QUANTILE_KEYS, QUANTILES, STATS_PATH
from dorobot_assets.lib.validate import (
    ERROR,
    WARNING,
    CheckResult,
    DatasetView,
    check,
    episode_stats_columns,
    failed,
    not_applicable,
    passed,
    q,
    read_json_object,
    short_list,
    stats_column_blocks,
)

LISTED = 10  # findings named in a description
# Float noise on top of one bin: a few float64 ulps of the dimension's magnitude.
_ULP_ALLOWANCE = 4 * np.finfo(np.float64).eps

# Source stats vs recomputed. Numeric: the recorder worked in float32, so agreement to ~1e-7
# relative is expected; 1e-4 relative (plus 1e-6 absolute) leaves room and still catches edits.
NUMERIC_RTOL = 1e-4
NUMERIC_ATOL = 1e-6
# Cameras: the recorder used the frames before lossy encoding, we decode the mp4, which moves
# pixel levels by a few units (golden pair, AV1 crf 30: mean 0.005, std 0.0006 in [0, 1] units).
# min/max of single pixels move too much under compression to be evidence, so only mean/std.
CAMERA_ATOL = 0.02
NUMERIC_COMPARED = ("min", "max", "mean", "std")
CAMERA_COMPARED = ("mean", "std")


def _is_numeric(spec: dict) -> bool:
    return isinstance(spec, dict) and spec.get("dtype") in NUMERIC_DTYPES


def _width(spec: dict) -> int:
    shape = spec.get("shape") or [1]
    return int(np.prod([int(s) for s in shape]))


def _quantile_position(n: int, q: float) -> tuple[int, float]:
    """DuckDB's quantile_cont position: the value at ``r + f`` in the sorted values (0-based),
    ``x[r] + f·(x[r+1] − x[r])``."""
    rn = (n - 1) * q
    r = math.floor(rn)
    return r, (rn - r if r + 1 < n else 0.0)


def _scan(con, values: list[str], aggregates: list[str], params: list[float]) -> tuple:
    """One pass over the data files: ``aggregates`` over the columns ``v0, v1, ...`` = ``values``."""
    columns = ", ".join(f"{v} AS v{i}" for i, v in enumerate(values))
    return con.execute(f"SELECT {', '.join(aggregates)} FROM (SELECT {columns} FROM data_full)", params).fetchone()


def _bounds_hold(con, values: list[str], targets: list[tuple[int, float, float, float]], extent: list[tuple]
                 ) -> tuple[list[bool | None], list[tuple[float, float, int]]]:
    """For each target ``(dimension, q, low, high)``: whether the exact quantile_cont lies in
    [low, high], decided from counts of values below ``low`` and up to ``high`` (streaming
    aggregates: no sort, memory independent of the data's size), or None where that needs the
    two order statistics around it. Also each dimension's (min, max, count)."""
    aggregates = [f"min(v{i}), max(v{i}), count(v{i})" for i in range(len(values))]
    params: list[float] = []
    for d, _q, low, high in targets:
        aggregates += [f"count_if(v{d} < ?)", f"count_if(v{d} <= ?)"]
        params += [low, high]
    row = _scan(con, values, aggregates, params)
    data_extent = [(row[3 * i], row[3 * i + 1], int(row[3 * i + 2])) for i in range(len(values))]
    if [e[:2] for e in data_extent] != [e[:2] for e in extent]:
        return [], data_extent  # the bounds came from another extent: the caller asks again
    verdicts: list[bool | None] = []
    for k, (d, quantile, _low, _high) in enumerate(targets):
        below, upto = row[3 * len(values) + 2 * k], row[3 * len(values) + 2 * k + 1]
        r, f = _quantile_position(data_extent[d][2], quantile)
        last = r + (1 if f > 0 else 0)  # the highest order statistic the value depends on
        if below > last or upto < r + 1:
            verdicts.append(False)  # x[last] < low, or x[r] > high
        elif below <= r and upto >= last + 1:
            verdicts.append(True)  # low <= x[r] <= value <= x[last] <= high
        else:
            verdicts.append(None)  # low or high falls between x[r] and x[r+1]
    return verdicts, data_extent


def _settle(con, values: list[str], targets: list[tuple[int, float, float, float]], extent: list[tuple]
            ) -> list[bool]:
    """The exact quantile_cont of each target from the order statistics next to its bounds:
    x[r] is the largest value below a bound and x[r+1] the smallest at or above it."""
    aggregates, params = [], []
    for d, _q, low, high in targets:
        for bound in (low, high):
            aggregates += [f"count_if(v{d} < ?)", f"max(CASE WHEN v{d} < ? THEN v{d} END)",
                           f"min(CASE WHEN v{d} >= ? THEN v{d} END)"]
            params += [bound, bound, bound]
    row = _scan(con, values, aggregates, params)
    out = []
    for k, (d, quantile, low, high) in enumerate(targets):
        r, f = _quantile_position(extent[d][2], quantile)
        value = None
        for b in range(2):
            below, before, after = row[6 * k + 3 * b: 6 * k + 3 * b + 3]
            if below == r + 1 and before is not None and after is not None:  # x[r] < bound <= x[r+1]
                value = before + f * (after - before)
        out.append(value is not None and low <= value <= high)
    return out


def _allowed(lo: float, hi: float) -> float:
    """One histogram bin of a dimension spanning [lo, hi], plus float noise."""
    return (hi - lo) / HISTOGRAM_BINS + _ULP_ALLOWANCE * max(abs(lo), abs(hi), 1.0)


def _claimed(stats: dict, key: str, d: int) -> float:
    """Element d of a stat in stats.json (NaN where it has fewer: then every bound fails)."""
    values = np.ravel(np.asarray(stats[key], np.float64))
    return float(values[d]) if d < len(values) else float("nan")


def _feature_verdicts(con, values: list[str], claimed: dict[str, np.ndarray]) -> tuple[list[bool], list[tuple]]:
    """Whether each (dimension, quantile) of ``values``, in that order, is within one bin of
    the exact quantile_cont; and each dimension's (min, max, count) in the data. The bounds need
    the extent: stats.json's min/max are tried first (one pass when they are right), the data's
    are used when they differ; a third pass settles bounds that fall between two values."""

    def targets(extent: list[tuple]) -> list[tuple[int, float, float, float]]:
        out = []
        for d, (lo, hi, _n) in enumerate(extent):
            for key, quantile in zip(QUANTILE_KEYS, QUANTILES):
                value, allowance = float(claimed[key][d]), _allowed(lo, hi)
                out.append((d, quantile, value - allowance, value + allowance))
        return out

    extent = [(float(claimed["min"][d]), float(claimed["max"][d]), 0) for d in range(len(values))]
    found, data_extent = _bounds_hold(con, values, targets(extent), extent)
    if not found:
        found, _ = _bounds_hold(con, values, targets(data_extent), data_extent)
    pending = [k for k, v in enumerate(found) if v is None]
    if pending:
        every = targets(data_extent)
        for k, v in zip(pending, _settle(con, values, [every[k] for k in pending], data_extent)):
            found[k] = v
    return [bool(v) for v in found], data_extent


@check(
    "stats_quantiles_exact", asset="dataset_stats", severity=ERROR,
    description="Every numeric feature's q01..q99 in meta/stats.json is within one histogram bin "
    f"((max - min) / {HISTOGRAM_BINS} of that dimension) of DuckDB's exact quantile_cont over the data files.",
)
def stats_quantiles_exact(view: DatasetView) -> CheckResult:
    path = view.root / STATS_PATH
    if not path.is_file():
        return not_applicable(f"{STATS_PATH} is absent")
    stats = read_json_object(path, path.name)
    features = [
        name for name, spec in view.features.items()
        if _is_numeric(spec) and isinstance(stats.get(name), dict) and all(k in stats[name] for k in QUANTILE_KEYS)
    ]
    if not features:
        return not_applicable(f"{STATS_PATH} has no quantiles (stats copied from a v2.1 source)")
    con = view.connect(data=True)
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE data_full)").fetchall())
    offending: list[dict] = []
    compared = 0
    quantile_list = "[" + ", ".join(repr(float(x)) for x in QUANTILES) + "]"
    # Dimensions of a vector feature get a pass over the data of their own, the scalar features
    # share one: the reader buffers every column a pass reads, vectors are most of the data.
    passes: list[list[tuple[str, int, str]]] = []
    scalars: list[tuple[str, int, str]] = []
    for name in features:
        if name not in types:
            offending.append({"feature": name, "dimension": None, "quantile": None,
                              "stats_json": None, "exact": None, "allowed": "column absent from the data"})
        elif types[name].endswith("]"):
            passes.append([(name, d, f"CAST({q(name)}[{d + 1}] AS DOUBLE)") for d in range(_width(view.features[name]))])
        else:
            scalars.append((name, 0, f"CAST({q(name)} AS DOUBLE)"))
    passes += [scalars] if scalars else []
    try:
        for dims in passes:
            values = [v for _, _, v in dims]
            claimed = {k: np.array([_claimed(stats[name], k, d) for name, d, _ in dims]) for k in ("min", "max", *QUANTILE_KEYS)}
            verdicts, extent = _feature_verdicts(con, values, claimed)
            compared += len(verdicts)
            for i in sorted({k // len(QUANTILE_KEYS) for k, ok in enumerate(verdicts) if not ok}):
                # the exact values, for the report (this one dimension's values are held)
                (exact,) = con.execute(f"SELECT quantile_cont({values[i]}, {quantile_list}) FROM data_full").fetchone()
                name, d, _ = dims[i]
                for j, key in enumerate(QUANTILE_KEYS):
                    if not verdicts[i * len(QUANTILE_KEYS) + j]:
                        offending.append({"feature": name, "dimension": d, "quantile": key,
                                          "stats_json": float(claimed[key][i]), "exact": exact[j],
                                          "allowed": _allowed(*extent[i][:2])})
    finally:
        con.close()
    offending.sort(key=lambda o: (features.index(o["feature"]), o["dimension"] or 0,
                                  QUANTILE_KEYS.index(o["quantile"]) if o["quantile"] else -1))
    counts = {"features": len(features), "quantiles": compared, "offending": len(offending)}
    if offending:
        named = "; ".join(
            f"{o['feature']}[{o['dimension']}] {o['quantile']}: {o['stats_json']} vs exact {o['exact']}"
            for o in offending[:LISTED]
        )
        return failed(f"{len(offending)} quantiles are more than one histogram bin from the exact value: {named}",
                      counts, offending)
    return passed(f"{compared} quantiles of {len(features)} numeric features are within one bin of the exact value",
                  counts)


def _source_stats_blocks(source: Path) -> Iterator[tuple[list[int], dict | list]]:
    """The source's v2.1 per-episode stats, a block of STATS_BLOCK_EPISODES lines at a time
    (parsed JSON is ~10x its numbers' size, so only a block of it is held): each line's
    episode_index and either ``{feature: {stat: array (lines, ...)}}`` when Arrow reads the
    lines alike (see :func:`parse_stats_lines`: every line has every feature and stat), or each
    line's ``stats`` as Python's json reads it."""
    lines: list[str] = []
    with open(source / EPISODES_STATS_FILE, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line)
                if len(lines) == STATS_BLOCK_EPISODES:
                    yield _parse_source_block(lines)
                    lines = []
    if lines:
        yield _parse_source_block(lines)


def _parse_source_block(lines: list[str]) -> tuple[list[int], dict | list]:
    parsed = parse_stats_lines(lines)
    if parsed is not None and parsed.episodes is not None:
        return parsed.episodes.tolist(), parsed.stats
    episodes, stats = [], []
    for line in lines:
        row = json.loads(line)
        episodes.append(int(row["episode_index"]))
        stats.append(row["stats"])
    return episodes, stats


def _dataset_episode_stats(view: DatasetView) -> tuple[dict[int, int], dict[str, dict[str, np.ndarray]]]:
    """Row of each episode index in meta/episodes, and the compared stats columns as
    ``{feature: {stat: (episodes, values) float64}}`` (columns with nulls or ragged values are
    left out: nothing sensible to compare)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    con = view.connect(episodes=True)
    try:
        wanted = {"count", *NUMERIC_COMPARED, *CAMERA_COMPARED}
        columns = {c: fs for c, fs in episode_stats_columns(view, con).items() if fs[1] in wanted}
        index = column_numpy(con.sql("SELECT episode_index FROM episodes ORDER BY ep_row").to_arrow_table().column(0))
        episodes = len(index)
        for part, table in stats_column_blocks(view, con, list(columns), episodes):
            for name, column in zip(part, table.columns):
                feature, stat = columns[name]
                values = nested_list_numpy(column)  # None: nulls, ragged or not numbers
                if values is not None and episodes:
                    out.setdefault(feature, {})[stat] = values.reshape(episodes, -1).astype(np.float64)
            del table
    finally:
        con.close()
    rows = {int(e): r for r, e in enumerate(index)}
    return rows, out


def _differences(stat: str, is_camera: bool, src: list | np.ndarray, ours: np.ndarray) -> list[tuple[int, dict]]:
    """``(k, finding)`` for the k-th of ``src`` (v2.1 values: a list, or an array with one row
    per value) that differs from ``ours[k]``: counts must be equal; min/max/mean/std within the
    tolerance, reporting the worst element."""
    if stat == "count":
        if isinstance(src, np.ndarray):  # float counts as Python floats: NaN raises as from a list
            first = src.reshape(len(src), -1)[:, 0]
            theirs = first if first.dtype == np.int64 else np.array(first.tolist(), np.int64)
        else:
            theirs = np.array([np.ravel(v)[0] for v in src], np.int64)
        mine = ours[:, 0].astype(np.int64)
        return [(int(k), {"stat": "count", "element": 0, "source": int(theirs[k]), "recomputed": int(mine[k])})
                for k in np.flatnonzero(theirs != mine)]
    try:
        a = np.asarray(src, np.float64).reshape(len(src), -1)
    except ValueError:  # ragged: some episode's value has another shape
        a = None
    if a is not None and a.shape[1:] == ours.shape[1:]:
        same_shape, found = list(range(len(src))), []
    else:
        flat = [np.ravel(np.asarray(v, np.float64)) for v in src]
        same_shape = [k for k, v in enumerate(flat) if v.shape == ours.shape[1:]]
        found = [(k, {"stat": stat, "element": None, "source": f"shape {v.shape}", "recomputed": f"shape {ours.shape[1:]}"})
                 for k, v in enumerate(flat) if v.shape != ours.shape[1:]]
        a = np.stack([flat[k] for k in same_shape]) if same_shape else None
    if same_shape:
        b = ours[same_shape]
        gap = np.abs(a - b)
        tol = CAMERA_ATOL if is_camera else NUMERIC_ATOL + NUMERIC_RTOL * np.maximum(np.abs(a), np.abs(b))
        bad = ~(gap <= tol)
        for j in np.flatnonzero(bad.any(axis=1)):
            elements = np.flatnonzero(bad[j])
            i = int(elements[np.argmax(gap[j, elements])])  # the worst element
            found.append((same_shape[j], {"stat": stat, "element": i, "source": float(a[j, i]),
                                          "recomputed": float(b[j, i])}))
    return found


@check(
    "stats_match_source", asset="episodes", severity=WARNING,
    description="Where the source recording has v2.1 per-episode stats, they agree with the recomputed "
    f"ones: numeric min/max/mean/std within {NUMERIC_RTOL:g} relative, camera mean/std within {CAMERA_ATOL:g} "
    "(decoded frames differ slightly from the frames the recorder saw), counts equal. Names the "
    "episodes and features that differ: a corrupted or hand-edited recording.",
)
def stats_match_source(view: DatasetView) -> CheckResult:
    if view.source is None:
        return not_applicable("no source recording to compare with (checked during a conversion)")
    if view.stats_mode == "copy":  # comparing a copy with its original: ~0.2 s and 5 MiB at 2000 episodes
        return not_applicable("the stats were copied from the source (stats mode copy): nothing recomputed to compare")
    if not (Path(view.source) / EPISODES_STATS_FILE).is_file():
        return not_applicable(f"the source has no {EPISODES_STATS_FILE} (v2.0): nothing to compare")
    if not view.has_episodes():
        return not_applicable("no meta/episodes to compare with")
    rows, ours = _dataset_episode_stats(view)
    order = {f: i for i, f in enumerate(ours)}
    found: list[tuple[tuple[int, int, int], dict]] = []
    compared = 0
    for episodes, source in _source_stats_blocks(Path(view.source)):
        kept = [k for k, episode in enumerate(episodes) if episode in rows]
        if isinstance(source, list):  # per-line dicts: features and stats may vary by line
            block = [(episodes[k], source[k]) for k in kept]
        else:  # arrays: every line has every feature and stat
            kept_episodes = [episodes[k] for k in kept]
        for feature, stats in ours.items():
            if isinstance(source, list):
                present = [(episode, src[feature]) for episode, src in block if feature in src]
                compared += len(present)
            else:
                arrays = source.get(feature, {})
                compared += len(kept) if feature in source else 0
            is_camera = view.features.get(feature, {}).get("dtype") in ("video", "image")
            for s, stat in enumerate(("count",) + (CAMERA_COMPARED if is_camera else NUMERIC_COMPARED)):
                if stat not in stats:
                    continue
                if isinstance(source, list):
                    having = [(episode, src[stat]) for episode, src in present if stat in src]
                    with_stat, values = [episode for episode, _ in having], [v for _, v in having]
                elif stat in arrays:
                    with_stat, values = kept_episodes, arrays[stat][kept]
                else:
                    continue  # no line has it
                if not with_stat:
                    continue  # nothing to compare
                mine = stats[stat][[rows[episode] for episode in with_stat]]
                for k, finding in _differences(stat, is_camera, values, mine):
                    episode = with_stat[k]
                    found.append(((rows[episode], order[feature], s), {"episode_index": episode, "feature": feature, **finding}))
    offending = [finding for _, finding in sorted(found, key=lambda x: x[0])]
    counts = {"episodes": len(rows), "features_compared": compared, "differences": len(offending)}
    if offending:
        pairs = list(dict.fromkeys(f"episode {o['episode_index']} {o['feature']}" for o in offending))
        worst = offending[0]
        return failed(
            f"recomputed stats differ from the source's {EPISODES_STATS_FILE} for {short_list(pairs, LISTED)}"
            f" (e.g. {worst['stat']}[{worst['element']}]: source "
            f"{worst['source']}, recomputed {worst['recomputed']})",
            counts, offending,
        )
    return passed(f"{compared} episode features agree with the source's {EPISODES_STATS_FILE}", counts)
