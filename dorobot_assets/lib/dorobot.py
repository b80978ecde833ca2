"""DoRobot's own metadata, carried into the v3.0 dataset (issue: audio, DoRobot metadata).

DoRobot recordings add ``meta/op_dataid.jsonl`` (the data id of each episode) and
``meta/common_record.json`` (the collection task). Both are copied byte for byte: DoRobot's tools
read them, and we have no reason to re-serialise what we do not own. The data id also becomes the
``dataid`` column of the episodes table (:mod:`episodes`), and ``dorobot_dataset_version`` becomes
``v1.1`` in info.json (:mod:`v30`). The reader (:mod:`v21`) has already parsed both files, so a
malformed one stops the conversion before this runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dorobot_assets.lib.errors import RecordingError
from dorobot_assets.lib.fsutil import atomic_path
from dorobot_assets.lib.v30 import DOROBOT_META_FILES, resolve_inside


def carry_over_meta(source_root: Path | str, dataset_root: Path | str) -> list[Path]:
    """Copy the DoRobot metadata files the source has into the dataset's ``meta/``, unchanged.

    A file the source lacks is removed from the dataset (left over from an earlier conversion
    of a recording that had it). Returns the files written.
    """
    source_root, dataset_root = Path(source_root), Path(dataset_root)
    written = []
    for relative in DOROBOT_META_FILES:
        source = source_root / relative
        target = resolve_inside(dataset_root, relative)
        if not source.is_file():
            target.unlink(missing_ok=True)
            continue
        try:
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        except OSError as e:
            raise RecordingError("dorobot_meta_unreadable", source, f"cannot be copied: {e}") from None
        written.append(target)
    return written
