"""The one Definitions object of the project (re-exported by the package as ``defs``)."""

import dagster as dg

from dorobot_assets.defs.assets import conversion_assets
from dorobot_assets.defs.jobs import convert_recording_job
from dorobot_assets.defs.resources import ConversionResource, StorageResource


def default_resources() -> dict:
    """Resources for UI, sensor and CLI runs; folders come from DOROBOT_* at run time."""
    return {
        "storage": StorageResource(),
        "conversion": ConversionResource(),
    }


defs = dg.Definitions(
    assets=conversion_assets,
    jobs=[convert_recording_job],
    resources=default_resources(),
)
