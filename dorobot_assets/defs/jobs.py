import dagster as dg

from dorobot_assets.defs.assets import conversion_assets, recording
from dorobot_assets.defs.partitions import recordings

# Everything that converts one recording (the observable source is not materialized).
convert_recording_job = dg.define_asset_job(
    "convert_recording",
    selection=dg.AssetSelection.assets(*[a for a in conversion_assets if a is not recording]),
    partitions_def=recordings,
    description="Convert one recording (partition) to a LeRobot v3.0 dataset.",
)
