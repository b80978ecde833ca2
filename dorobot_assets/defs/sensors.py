"""The inbox sensor: every recording that lands in ``DOROBOT_INBOX`` becomes a partition and a run.

The decisions (readiness, settle time, cursor, cap) live in ``lib/inbox.py``; this module only
turns a plan into one ``SensorResult`` and writes the reasons into the tick log.
"""

from __future__ import annotations

import time

import dagster as dg

from dorobot_assets.defs.assets import info
from dorobot_assets.defs.jobs import convert_recording_job
from dorobot_assets.defs.partitions import recordings
from dorobot_assets.defs.resources import StorageResource
from dorobot_assets.lib import inbox

SOURCE_TAG = "dorobot/source"
FINGERPRINT_TAG = "dorobot/fingerprint"


def converted_at(instance: dg.DagsterInstance, key: str, fingerprint: str) -> bool:
    """Whether the last ``info`` materialization of ``key`` (the end of a conversion) was made
    from the recording in exactly this state, e.g. by a run launched from the UI or the shell."""
    if not instance.has_dynamic_partition(recordings.name, key):
        return False
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=info.key, asset_partitions=[key]), limit=1
    ).records
    if not records:
        return False
    materialization = records[0].asset_materialization
    return materialization is not None and materialization.tags.get("dagster/data_version") == fingerprint


@dg.sensor(
    name="inbox_sensor",
    job=convert_recording_job,
    minimum_interval_seconds=inbox.sensor_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Converts every recording that appears (or changes) in DOROBOT_INBOX. A sub-folder is ready "
        f"when it holds a `{inbox.READY_MARKER}` marker, or when `meta/info.json` exists and nothing "
        f"changed for DOROBOT_SETTLE_SECONDS (default {inbox.DEFAULT_SETTLE_SECONDS} s). Folders that "
        "are not recordings are reported in the tick log and left alone until they change."
    ),
)
def inbox_sensor(context: dg.SensorEvaluationContext, storage: StorageResource):
    inbox_root = storage.inbox_root()
    if inbox_root is None:
        return dg.SkipReason("DOROBOT_INBOX is not set: no inbox to watch")
    if not inbox_root.is_dir():
        return dg.SkipReason(f"the inbox {inbox_root} does not exist")
    registry = storage.registry()
    plan = inbox.plan_tick(
        inbox_root,
        context.cursor,
        time.time(),
        inbox.InboxSettings.from_env(),
        register=registry.register,
        is_converted=lambda key, fp: converted_at(context.instance, key, fp),
    )
    for folder, reason in plan.invalid:
        context.log.warning(f"skipped {folder.name}: not a recording ({reason}); "
                            "it is looked at again when it changes")
    for c in plan.already_converted:
        context.log.info(f"{c.folder.name}: partition {c.key} is already converted from this state")
    for c in plan.conversions:
        context.log.info(f"{c.folder.name}: converting as partition {c.key} (run key {c.run_key})")
    context.log.info(plan.summary())

    new_keys = sorted({c.key for c in plan.conversions
                       if not context.instance.has_dynamic_partition(recordings.name, c.key)})
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=c.run_key,
                partition_key=c.key,
                tags={SOURCE_TAG: str(c.folder), FINGERPRINT_TAG: c.fingerprint},
            )
            for c in plan.conversions
        ],
        dynamic_partitions_requests=[recordings.build_add_request(new_keys)] if new_keys else [],
        cursor=plan.cursor,
        skip_reason=None if plan.conversions else f"nothing new to convert: {plan.summary()}",
    )
