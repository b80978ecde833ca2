"""Checks of recomputed statistics (issue: statistics), registered with lib/validate.py.

- ``stats_quantiles_exact`` (error): every numeric feature's q01..q99 in meta/stats.json is within
  one histogram bin of DuckDB's exact ``quantile_cont`` over the data files.
- ``stats_match_source`` (warning): where the source recording has v2.1 per-episode stats, the
  recomputed min/max/mean/std agree with them; differences point at corrupted or hand-edited
  recordings, so the episodes and features are named.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dorobot_assets.lib.stats import HISTOGRAM_BINS
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
    try:
        for name in features:
            if name not in types:
                offending.append({"feature": name, "dimension": None, "quantile": None,
                                  "stats_json": None, "exact": None, "allowed": "column absent from the data"})
                continue
            is_list = types[name].endswith("]")
            width = _width(view.features[name])
            parts = []
            for d in range(width):
                value = f"CAST({q(name)}[{d + 1}] AS DOUBLE)" if is_list else f"CAST({q(name)} AS DOUBLE)"
                parts += [f"quantile_cont({value}, {quantile_list})", f"min({value})", f"max({value})"]
            row = con.execute(f"SELECT {', '.join(parts)} FROM data_full").fetchone()
            ours = {k: np.asarray(stats[name][k], np.float64).ravel() for k in QUANTILE_KEYS}
            for d in range(width):
                exact, lo, hi = row[3 * d], row[3 * d + 1], row[3 * d + 2]
                allowed = (hi - lo) / HISTOGRAM_BINS + _ULP_ALLOWANCE * max(abs(lo), abs(hi), 1.0)
                for j, key in enumerate(QUANTILE_KEYS):
                    compared += 1
                    mine = float(ours[key][d]) if d < len(ours[key]) else float("nan")
                    if not abs(mine - exact[j]) <= allowed:
                        offending.append({"feature": name, "dimension": d, "quantile": key,
                                          "stats_json": mine, "exact": exact[j], "allowed": allowed})
    finally:
        con.close()
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


def _source_stats(source: Path) -> dict[int, dict]:
    stats: dict[int, dict] = {}
    with open(source / EPISODES_STATS_FILE, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                stats[int(row["episode_index"])] = row["stats"]
    return stats


def _dataset_episode_stats(view: DatasetView) -> dict[int, dict[str, dict[str, object]]]:
    con = view.connect(episodes=True)
    try:
        columns = episode_stats_columns(view, con)
        if not columns:
            return {}
        cur = con.execute(f"SELECT episode_index, {', '.join(q(c) for c in columns)} FROM episodes ORDER BY ep_row")
        out: dict[int, dict[str, dict[str, object]]] = {}
        for row in cur.fetchall():
            per_feature: dict[str, dict[str, object]] = {}
            for (feature, stat), value in zip(columns.values(), row[1:]):
                per_feature.setdefault(feature, {})[stat] = value
            out[int(row[0])] = per_feature
        return out
    finally:
        con.close()


def _compare(feature: str, is_camera: bool, src: dict, ours: dict) -> list[dict]:
    found = []
    if "count" in src and "count" in ours and int(np.ravel(src["count"])[0]) != int(np.ravel(ours["count"])[0]):
        found.append({"stat": "count", "element": 0, "source": int(np.ravel(src["count"])[0]),
                      "recomputed": int(np.ravel(ours["count"])[0])})
    for stat in CAMERA_COMPARED if is_camera else NUMERIC_COMPARED:
        if stat not in src or ours.get(stat) is None:
            continue
        a = np.asarray(src[stat], np.float64).ravel()
        b = np.asarray(ours[stat], np.float64).ravel()
        if a.shape != b.shape:
            found.append({"stat": stat, "element": None, "source": f"shape {a.shape}", "recomputed": f"shape {b.shape}"})
            continue
        tol = CAMERA_ATOL if is_camera else NUMERIC_ATOL + NUMERIC_RTOL * np.maximum(np.abs(a), np.abs(b))
        bad = np.flatnonzero(~(np.abs(a - b) <= tol))
        if len(bad):
            i = int(bad[np.argmax(np.abs(a - b)[bad])])  # the worst element
            found.append({"stat": stat, "element": i, "source": float(a[i]), "recomputed": float(b[i])})
    return [{"feature": feature, **f} for f in found]


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
    if not (Path(view.source) / EPISODES_STATS_FILE).is_file():
        return not_applicable(f"the source has no {EPISODES_STATS_FILE} (v2.0): nothing to compare")
    if not view.has_episodes():
        return not_applicable("no meta/episodes to compare with")
    source = _source_stats(Path(view.source))
    ours = _dataset_episode_stats(view)
    offending: list[dict] = []
    compared = 0
    for episode, features in ours.items():
        src_features = source.get(episode)
        if src_features is None:
            continue
        for feature, stats in features.items():
            if feature not in src_features:
                continue
            compared += 1
            is_camera = view.features.get(feature, {}).get("dtype") in ("video", "image")
            offending += [{"episode_index": episode, **f} for f in _compare(feature, is_camera, src_features[feature], stats)]
    counts = {"episodes": len(ours), "features_compared": compared, "differences": len(offending)}
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
