"""Asset checks: every check registered in lib/validate.py, on the asset it inspects.

Each asset declares its checks (``check_specs``) and runs them in its own step right after
writing, on one DuckDB connection: a separate check step per asset cost a Dagster step (events,
instance writes) and a fresh DuckDB session each, about a third of a small conversion.
Error-severity checks are blocking: a failed one fails the asset's step after its results are
recorded, so nothing downstream runs and the ``info`` asset never publishes meta/info.json.
During a conversion info.json does not exist yet, so checks see the pending info (what the
``info`` asset would write). The checks about info.json itself run inside the ``info`` asset
before it writes (:func:`info_check_results`). Deep checks (decoding every frame) are left to
``dorobot-assets validate --deep``.
"""

from typing import Iterator

import dagster as dg
import pyarrow as pa

from dorobot_assets.lib import info as info_lib
from dorobot_assets.lib.arrow import int64_array, release_freed_memory
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
    return validate.DatasetView(root=root, info=info, source=rec.root, work=work, pending_episodes=pending)


def _severity(severity: str) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity.ERROR if severity == validate.ERROR else dg.AssetCheckSeverity.WARN


def to_check_result(result: validate.CheckResult) -> dg.AssetCheckResult:
    """Counts as metadata, offending rows as a markdown table (shown in the UI)."""
    metadata: dict = {**result.counts, "applicable": result.applicable}
    if result.offending:
        metadata["offending"] = dg.MetadataValue.md(validate.offending_markdown(result.offending))
    return dg.AssetCheckResult(
        asset_key=dg.AssetKey(result.asset), check_name=result.name, passed=result.passed,
        severity=_severity(result.severity), description=result.description, metadata=metadata,
    )


def registered_for(asset: str) -> list[validate.CheckSpec]:
    return [s for s in validate.registered_checks() if not s.deep and s.asset == asset]


def check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    """The ``check_specs`` of ``asset``: its registered checks, blocking when error-severity."""
    return [
        dg.AssetCheckSpec(name=s.name, asset=asset, description=s.description,
                          blocking=s.severity == validate.ERROR)
        for s in registered_for(asset)
    ]


def _selected(context: dg.AssetExecutionContext, asset: str) -> list[validate.CheckSpec]:
    chosen = {k.name for k in context.selected_asset_check_keys}
    return [s for s in registered_for(asset) if s.name in chosen]


def check_results(context: dg.AssetExecutionContext, asset: str, make_view) -> list[dg.AssetCheckResult]:
    """Run the selected checks of ``asset`` on the view ``make_view()`` returns (one DuckDB
    session for all of them). An output that cannot be inspected fails every check."""
    selected = _selected(context, asset)
    if not selected:
        return []
    try:
        view = make_view()
    except DorobotError as e:  # e.g. a manifest made from another version of the recording
        return [
            dg.AssetCheckResult(
                asset_key=dg.AssetKey(asset), check_name=spec.name, passed=False,
                severity=_severity(spec.severity), description=f"cannot inspect the output: {e}",
            )
            for spec in selected
        ]
    try:
        return [to_check_result(validate.run_check(spec, view)) for spec in selected]
    finally:
        view.close()
        release_freed_memory()


def info_check_results(context: dg.AssetExecutionContext, view: validate.DatasetView) -> Iterator[dg.AssetCheckResult]:
    """Run the info checks on the pending info; if one fails with error severity, withdraw any
    earlier meta/info.json (it would vouch for files that no longer match it) and raise after
    reporting them, so the info asset writes nothing."""
    try:
        results = [validate.run_check(spec, view) for spec in _selected(context, INFO_ASSET)]
    finally:
        view.close()
    for result in results:
        yield to_check_result(result)
    errors = [r for r in results if r.is_error]
    if errors:
        (view.root / INFO_PATH).unlink(missing_ok=True)
        faults = "; ".join(f"check {r.name} failed: {r.description}" for r in errors)
        raise dg.Failure(description=f"meta/info.json not written: {faults}")
