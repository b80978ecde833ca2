"""The one Definitions object of the project (re-exported by the package as ``defs``)."""

import warnings

import dagster as dg

# observable_source_asset and partitioned checks are beta/preview in 1.13 (pinned minor).
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

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
