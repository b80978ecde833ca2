"""Thin Dagster wrappers around dorobot_assets.lib (see DESIGN.md)."""

import warnings

import dagster as dg

# observable_source_asset and partitioned checks are beta/preview in 1.13 (pinned minor); set
# here so that importing any defs module, not only definitions.py, keeps the output quiet.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
