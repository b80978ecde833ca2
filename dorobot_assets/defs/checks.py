"""Asset checks: every check registered in lib/validate.py, on the asset it inspects.

Error-severity checks are blocking, so a broken artifact stops the run before the ``info`` asset
publishes meta/info.json. During a conversion info.json does not exist yet, so checks see the
pending info (what the ``info`` asset would write). The checks about info.json itself run inside
the ``info`` asset before it writes (:func:`info_check_results`); as asset checks on ``info`` they
would only run after info.json was already published. Deep checks (decoding every frame) are
left to ``dorobot-assets validate --deep``.
"""

from typing import Iterator

import dagster as dg
import pyarrow as pa

from dorobot_assets.defs.partitions import recordings
from dorobot_assets.defs.resources import ConversionResource, StorageResource
from dorobot_assets.lib import info as info_lib
from dorobot_assets.lib import validate
from dorobot_assets.lib.errors import DorobotError
from dorobot_assets.lib.manifest import has_manifest, read_manifest
from dorobot_assets.lib.v30 import INFO_PATH

INFO_ASSET = "info"
# Their placements reach meta/episodes only when the episodes asset runs, after them.
PLACEMENT_ASSETS = ("videos", "audio")


def _manifest_extra(work, name: str) -> dict:
    return read_manifest(work, name)[1] if has_manifest(work, name) else {}


def _pending_episodes(rec, work, asset: str) -> pa.Table:
    """What meta/episodes will hold for ``asset``: its placements plus each episode's length."""
    table, _ = read_manifest(work, asset, rec.fingerprint())
    lengths = {e.index: e.length for e in rec.episodes}
    return table.append_column(
        "length", pa.array([lengths.get(i) for i in table.column("episode_index").to_pylist()], pa.int64())
    )


def conversion_view(
    storage: StorageResource, conversion: ConversionResource, key: str, asset: str
) -> validate.DatasetView:
    """The dataset as a check sees it mid-conversion: pending info, and for the videos/audio
    assets the placements they just wrote instead of a not yet (re)written meta/episodes."""
    from dorobot_assets.defs.assets import load_recording  # assets imports this module

    rec = load_recording(storage, conversion, key)
    root, work = storage.dataset_root(key), storage.work_dir(key)
    info = info_lib.pending_info(
        rec, root, conversion.settings(),
        audio_features_info=_manifest_extra(work, "audio").get("features_info") or None,
        dropped_features=tuple(_manifest_extra(work, "videos").get("dropped_cameras", ())),
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


def _asset_checks(asset: str, specs: list[validate.CheckSpec]) -> dg.AssetChecksDefinition:
    """One step runs all checks of an asset (each its own DuckDB connection): a step per check
    would cost a process start per check under the multiprocess executor."""

    @dg.multi_asset_check(
        name=f"{asset}_checks",
        specs=[
            dg.AssetCheckSpec(
                name=s.name, asset=asset, description=s.description, blocking=s.severity == validate.ERROR,
                additional_deps=list(s.needs), partitions_def=recordings,
            )
            for s in specs
        ],
        can_subset=True,
    )
    def _checks(
        context: dg.AssetCheckExecutionContext, storage: StorageResource, conversion: ConversionResource
    ) -> Iterator[dg.AssetCheckResult]:
        chosen = {k.name for k in context.selected_asset_check_keys}
        selected = [s for s in specs if s.name in chosen]
        try:
            view = conversion_view(storage, conversion, context.partition_key, asset)
        except DorobotError as e:  # e.g. a manifest made from another version of the recording
            for spec in selected:
                yield dg.AssetCheckResult(
                    asset_key=dg.AssetKey(asset), check_name=spec.name, passed=False,
                    severity=_severity(spec.severity), description=f"cannot inspect the output: {e}",
                )
            return
        for spec in selected:
            yield to_check_result(validate.run_check(spec, view))

    return _checks


def _specs(*, info: bool) -> list[validate.CheckSpec]:
    return [s for s in validate.registered_checks() if not s.deep and (s.asset == INFO_ASSET) == info]


def build_asset_checks() -> list[dg.AssetChecksDefinition]:
    by_asset: dict[str, list[validate.CheckSpec]] = {}
    for spec in _specs(info=False):
        by_asset.setdefault(spec.asset, []).append(spec)
    return [_asset_checks(asset, specs) for asset, specs in by_asset.items()]


def info_check_specs() -> list[dg.AssetCheckSpec]:
    """The checks the ``info`` asset runs on its pending info.json (``check_specs=``)."""
    return [
        dg.AssetCheckSpec(name=s.name, asset=INFO_ASSET, description=s.description,
                          blocking=s.severity == validate.ERROR)
        for s in _specs(info=True)
    ]


def info_check_results(view: validate.DatasetView) -> Iterator[dg.AssetCheckResult]:
    """Run the info checks on the pending info; if one fails with error severity, withdraw any
    earlier meta/info.json (it would vouch for files that no longer match it) and raise after
    reporting them, so the info asset writes nothing."""
    results = [validate.run_check(spec, view) for spec in _specs(info=True)]
    for result in results:
        yield to_check_result(result)
    errors = [r for r in results if r.is_error]
    if errors:
        (view.root / INFO_PATH).unlink(missing_ok=True)
        faults = "; ".join(f"check {r.name} failed: {r.description}" for r in errors)
        raise dg.Failure(description=f"meta/info.json not written: {faults}")


conversion_checks = build_asset_checks()
