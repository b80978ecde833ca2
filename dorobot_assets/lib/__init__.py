"""Plain-Python conversion code. Nothing in this package imports dagster."""
