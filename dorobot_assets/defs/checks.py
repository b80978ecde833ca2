"""Asset checks: every check registered in lib/validate.py, run by the asset it inspects.

Each asset declares one Dagster check, ``validation``, which runs all the asset's registered
checks in its own step right after writing, on one DuckDB connection (a separate check step per
asset cost a Dagster step and a fresh DuckDB session each, about a third of a small
conversion). Its result lists every lib check, and each failure's offending rows, in the UI.
A failed error-level check fails it with error severity, which blocks: the asset's step fails
after the result is recorded, nothing downstream runs and the ``info`` asset never publishes
meta/info.json. During a conversion info.json does not exist yet, so checks see the pending
info (what the ``info`` asset would write). The checks about info.json itself run inside the
``info`` asset before it writes (:func:`info_check_results`). Deep checks (decoding every frame)
are left to ``dorobot-assets validate --deep``.
"""

from typing import Iterator

import dagster as dg
import pyarrow as pa

from dorobot_assets.lib import info as info_lib
from dorobot_assets.lib.arrow import int64_array
from dorobot_assets.lib import validate
from dorobot_assets.lib.errors import DorobotError
from dorobot_assets.lib.manifest import has_manifest, read_manifest
from dorobot_assets.lib.v21 import Recording
from dorobot_assets.lib.v30 import INFO_PATH

INFO_ASSET = "info"
# Their placements reach meta/episodes only when the episodes asset runs, after them.
PLACEMENT_ASSETS = ("videos", "audio")


def _manifest_extra(work, name: str) -> dict:
    return read_manifest(work, name)[1] if has_manifest(work, name) else {}


def _pending_episodes(rec: Recording, work, asset: str) -> pa.Table:
    """What meta/episodes will hold for ``asset``: its placements plus each episode's length."""
    table, _ = read_manifest(work, asset, rec.fingerprint())
    lengths = {e.index: e.length for e in rec.episodes}
    return table.append_column(
        "length", int64_array([lengths.get(i) for i in table.column("episode_index").to_pylist()])
    )


def info_arguments(video_extra: dict, audio_extra: dict) -> dict:
    """What the videos and audio manifests add to info.json (``pending_info`` / ``write_info``
    keyword arguments): re-encoded cameras' video info, dropped cameras, microphones' info."""
    return dict(
        audio_features_info=audio_extra.get("features_info") or None,
        dropped_features=tuple(video_extra.get("dropped_cameras", ())),
        video_features_info=video_extra.get("features_info") or None,
    )


def conversion_view(rec: Recording, root, work, settings, asset: str) -> validate.DatasetView:
    """The dataset as a check sees it mid-conversion: pending info, and for the videos/audio
    assets the placements they just wrote instead of a not yet (re)written meta/episodes."""
    info = info_lib.pending_info(
        rec, root, settings, **info_arguments(_manifest_extra(work, "videos"), _manifest_extra(work, "audio"))
    )
    pending = _pending_episodes(rec, work, asset) if asset in PLACEMENT_ASSETS else None
    return validate.DatasetView(root=root, info=info, source=rec.root, work=work, pending_episodes=pending,
                                stats_mode=settings.stats)


VALIDATION_CHECK = "validation"  # the one Dagster check of each asset


# validate's status of a check (the CLI's table), in words for the UI's table
_OUTCOME = {"ok": "passed", "FAIL": "FAILED", "warn": "warning", "skip": "not applicable"}


def to_check_result(asset: str, results: list[validate.CheckResult]) -> dg.AssetCheckResult:
    """The asset's ``validation`` check: passed when every one of its lib checks passed; failed
    with error severity (which blocks) when an error-level one failed, else with warning
    severity. The UI shows a table of every lib check and each failure's offending rows; the
    ``results`` entry holds the same per lib check for programs (:func:`lib_check_results`)."""
    failed = sorted((r for r in results if not r.passed), key=lambda r: not r.is_error)  # errors first
    if failed:
        description = "; ".join(f"check {r.name} failed: {r.description}" for r in failed)
    else:
        skipped = sum(not r.applicable for r in results)
        description = f"{len(results)} checks passed" + (f" ({skipped} with nothing to check)" if skipped else "")
    metadata: dict = {
        "checks": dg.MetadataValue.md(validate.offending_markdown([
            {"check": r.name, "level": r.severity, "result": _OUTCOME[validate.status_word(r)], "detail": r.description} for r in results
        ])),
        "results": dg.MetadataValue.json({
            r.name: {"passed": r.passed, "severity": r.severity, "applicable": r.applicable,
                     "description": r.description, "counts": r.counts}
            for r in results
        }),
        "failed": len(failed),
    }
    for r in failed:
        if r.offending:
            metadata[f"{r.name} offending"] = dg.MetadataValue.md(validate.offending_markdown(r.offending))
    return dg.AssetCheckResult(
        asset_key=dg.AssetKey(asset), check_name=VALIDATION_CHECK, passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR if any(r.is_error for r in failed) else dg.AssetCheckSeverity.WARN,
        description=description, metadata=metadata,
    )


def lib_check_results(evaluation: dg.AssetCheckEvaluation) -> dict[str, dict]:
    """Each lib check's outcome inside an asset's ``validation`` evaluation, by check name:
    passed, severity, applicable, description, counts."""
    entry = evaluation.metadata.get("results")
    return dict(entry.value) if entry is not None else {}


def registered_for(asset: str) -> list[validate.CheckSpec]:
    return [s for s in validate.registered_checks() if not s.deep and s.asset == asset]


def check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    """The ``check_specs`` of ``asset``: one Dagster check running all its registered lib checks,
    blocking when any of them is error-level. One per asset rather than one per lib check:
    every Dagster check adds a planned event, an output and an evaluation to the run, each
    stored and fetched back, ~10 ms a check; 31 of them took ~0.3 s of a one-episode conversion."""
    registered = registered_for(asset)
    if not registered:
        return []
    listing = ", ".join(f"{s.name} ({s.severity})" for s in registered)
    return [
        dg.AssetCheckSpec(
            name=VALIDATION_CHECK, asset=asset,
            blocking=any(s.severity == validate.ERROR for s in registered),
            description=f"The `dorobot-assets validate` checks of this artifact, run right after it is "
            f"written: {listing}. A failed error-level check blocks everything downstream, so "
            f"meta/info.json is not written.",
        )
    ]


def _selected(context: dg.AssetExecutionContext, asset: str) -> list[validate.CheckSpec]:
    if dg.AssetCheckKey(dg.AssetKey(asset), VALIDATION_CHECK) not in context.selected_asset_check_keys:
        return []
    return registered_for(asset)


def check_results(context: dg.AssetExecutionContext, asset: str, make_view) -> list[dg.AssetCheckResult]:
    """Run the checks of ``asset`` (when its validation check is selected) on the view
    ``make_view()`` returns (one DuckDB session for all of them). An output that cannot be
    inspected fails every check."""
    selected = _selected(context, asset)
    if not selected:
        return []
    try:
        view = make_view()
    except DorobotError as e:  # e.g. a manifest made from another version of the recording
        return [to_check_result(asset, [
            validate.CheckResult(name=spec.name, passed=False, severity=spec.severity, asset=asset,
                                 description=f"cannot inspect the output: {e}")
            for spec in selected
        ])]
    try:
        return [to_check_result(asset, [validate.run_check(spec, view) for spec in selected])]
    finally:
        view.close()


def info_check_results(context: dg.AssetExecutionContext, view: validate.DatasetView) -> Iterator[dg.AssetCheckResult]:
    """Run the info checks on the pending info; if one fails with error severity, withdraw any
    earlier meta/info.json (it would vouch for files that no longer match it) and raise after
    reporting them, so the info asset writes nothing."""
    selected = _selected(context, INFO_ASSET)
    try:
        results = [validate.run_check(spec, view) for spec in selected]
    finally:
        view.close()
    if selected:
        yield to_check_result(INFO_ASSET, results)
    errors = [r for r in results if r.is_error]
    if errors:
        (view.root / INFO_PATH).unlink(missing_ok=True)
        faults = "; ".join(f"check {r.name} failed: {r.description}" for r in errors)
        raise dg.Failure(description=f"meta/info.json not written: {faults}")
