"""Typed errors. Every fault found in an input names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class DorobotError(Exception):
    """Base class of every error this project raises on purpose."""


class RecordingError(DorobotError):
    """A source recording is not acceptable. Raised before anything is written.

    ``code`` is a stable, machine-readable name of the fault (tests and tools match on it);
    ``path`` is the offending file (or folder); ``fault`` says what is wrong in words.
    """

    def __init__(self, code: str, path: Path | str, fault: str):
        self.code = code
        self.path = Path(path)
        self.fault = fault
        super().__init__(f"{self.path}: {fault} [{code}]")


class ConfigError(DorobotError):
    """A setting or command-line argument is invalid."""


class OutputError(DorobotError):
    """Something we wrote (or are about to publish) is inconsistent."""
