"""Thin Dagster wrappers around ``dorobot_assets.lib``."""
