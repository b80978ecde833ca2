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


def conversion_view(storage: StorageResource, conversion: ConversionResource, key: str, asset: str) -> validate.DatasetView:
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


def to_check_result(result: validate.CheckResult, *, with_keys: bool = False) -> dg.AssetCheckResult:
    metadata: dict = {**result.counts, "applicable": result.applicable}
    if result.offending:
        metadata["offending"] = dg.MetadataValue.md(validate.offending_markdown(result.offending))
    severity = dg.AssetCheckSeverity.ERROR if result.severity == validate.ERROR else dg.AssetCheckSeverity.WARN
    keys = {"asset_key": dg.AssetKey(result.asset), "check_name": result.name} if with_keys else {}
    return dg.AssetCheckResult(
        passed=result.passed, severity=severity, description=result.description, metadata=metadata, **keys
    )


def _asset_check(spec: validate.CheckSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        name=spec.name,
        asset=spec.asset,
        partitions_def=recordings,
        blocking=spec.severity == validate.ERROR,
        description=spec.description,
        additional_deps=list(spec.needs) or None,
    )
    def _check(
        context: dg.AssetCheckExecutionContext, storage: StorageResource, conversion: ConversionResource
    ) -> dg.AssetCheckResult:
        try:
            view = conversion_view(storage, conversion, context.partition_key, spec.asset)
        except DorobotError as e:  # e.g. a manifest made from another version of the recording
            return dg.AssetCheckResult(
                passed=False, description=f"cannot inspect the output: {e}",
                severity=dg.AssetCheckSeverity.ERROR if spec.severity == validate.ERROR else dg.AssetCheckSeverity.WARN,
            )
        return to_check_result(validate.run_check(spec, view))

    return _check


def _specs(*, info: bool) -> list[validate.CheckSpec]:
    return [s for s in validate.registered_checks() if not s.deep and (s.asset == INFO_ASSET) == info]


def build_asset_checks() -> list[dg.AssetChecksDefinition]:
    return [_asset_check(spec) for spec in _specs(info=False)]


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
        yield to_check_result(result, with_keys=True)
    errors = [r for r in results if r.is_error]
    if errors:
        (view.root / INFO_PATH).unlink(missing_ok=True)
        raise dg.Failure(
            description="meta/info.json not written: " + "; ".join(f"check {r.name} failed: {r.description}" for r in errors)
        )


conversion_checks = build_asset_checks()
