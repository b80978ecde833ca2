"""Arrow arrays built from and read into numpy through their buffers.

pyarrow 26 imports pandas (when it is installed, as with the test extra) the first time
``pa.array`` converts Python numbers, ``to_numpy`` runs, or ``pq.read_table`` loads
pyarrow.dataset: 0.5-0.8 s and ~30 MiB in whichever conversion step gets there first. The
helpers here never reach that code, so a conversion does not depend on whether pandas is present.
"""

from __future__ import annotations

import ctypes
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _validity(values: Sequence) -> tuple[pa.Buffer | None, int]:
    """Arrow validity bitmap of ``values`` (None = null) and the null count."""
    valid = np.fromiter((v is not None for v in values), bool, len(values))
    nulls = len(values) - int(np.count_nonzero(valid))
    if not nulls:
        return None, 0
    return pa.py_buffer(np.packbits(valid, bitorder="little")), nulls


def _primitive_array(values: Sequence, np_type: str, arrow_type: pa.DataType) -> pa.Array:
    mask, nulls = _validity(values)
    data = np.fromiter((0 if v is None else v for v in values), np_type, len(values))
    return pa.Array.from_buffers(arrow_type, len(values), [mask, pa.py_buffer(data)], null_count=nulls)


def int64_array(values: Sequence[int | None]) -> pa.Array:
    return _primitive_array(values, "int64", pa.int64())


def float64_array(values: Sequence[float | None]) -> pa.Array:
    return _primitive_array(values, "float64", pa.float64())


def numpy_array(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """A 1-D numpy array of ``arrow_type``'s own fixed-width type, without nulls, as Arrow."""
    values = np.ascontiguousarray(values, dtype=arrow_type.to_pandas_dtype())
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def _utf8(value: str | None) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise pa.ArrowTypeError(f"expected a str, got {type(value).__name__} {value!r}")
    return value.encode("utf-8")


def string_array(values: Sequence[str | None]) -> pa.Array:
    mask, nulls = _validity(values)
    encoded = [_utf8(v) for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    if offsets[-1] >= 2**31:  # beyond 32-bit string offsets: let pyarrow pick the layout
        return pa.array(list(values), pa.string())
    return pa.Array.from_buffers(
        pa.string(), len(encoded),
        [mask, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))], null_count=nulls,
    )


def string_list_array(values: Sequence[Sequence[str]]) -> pa.Array:
    """``list<string>`` (no null lists), e.g. each episode's tasks."""
    lengths = np.fromiter(map(len, values), np.int64, len(values))
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    items = string_array([item for row in values for item in row])
    return pa.ListArray.from_arrays(numpy_array(offsets, pa.int32()), items)


def column_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The values of a fixed-width numeric column as numpy, read from its buffers. Columns with
    nulls or of other types (booleans are bit-packed) go through Arrow's own conversion, which may
    import pandas."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    dtype = None
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        dtype = np.dtype(column.type.to_pandas_dtype())
    if dtype is None or column.null_count:
        return column.to_numpy() if isinstance(column, pa.ChunkedArray) else column.to_numpy(zero_copy_only=False)
    parts = [
        np.frombuffer(c.buffers()[1], dtype, count=len(c), offset=c.offset * dtype.itemsize) for c in chunks
    ]
    if not parts:
        return np.empty(0, dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def read_parquet(path) -> pa.Table:
    """A whole parquet file as a table (``pq.read_table`` would load pyarrow.dataset, see above)."""
    return pq.ParquetFile(path).read()


def nested_list_array(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """Rows of a regular array ``(rows, d1, d2, ...)`` as nested lists ``list<list<...>>`` of
    ``arrow_type`` (int64 or float64), one list level per dimension after the first."""
    flat = np.ascontiguousarray(values, dtype=arrow_type.to_pandas_dtype()).reshape(-1)
    column = numpy_array(flat, arrow_type)
    for size in reversed(values.shape[1:]):
        offsets = np.arange(0, len(column) + 1, size, dtype=np.int32)
        column = pa.ListArray.from_arrays(numpy_array(offsets, pa.int32()), column)
    return column


def list_values(arr: pa.Array) -> pa.Array:
    """The items of a list or fixed-size list array, in order (``flatten()`` imports
    pyarrow.compute, ~0.15 s on first use)."""
    if pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
        return arr.values.slice(arr.offset * size, len(arr) * size)
    offsets = column_numpy(arr.offsets)
    if not len(arr):
        return arr.values.slice(0, 0)
    return arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


def nested_list_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """A column of equally long nested numeric lists as a ``(rows, d1, d2, ...)`` array, or None
    when the lists are ragged, null or not numeric (callers then use ``to_pylist``)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    shape = [len(arr)]
    while pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        if arr.null_count:
            return None
        offsets = column_numpy(arr.offsets) if pa.types.is_list(arr.type) else None
        inner = list_values(arr)
        if offsets is not None:
            sizes = np.diff(offsets)
            if len(sizes) and sizes.min() != sizes.max():
                return None
            size = int(sizes[0]) if len(sizes) else 0
        else:
            size = arr.type.list_size
        shape.append(size)
        arr = inner
    if arr.null_count or not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        return None
    return column_numpy(arr).reshape(shape)


# Rows per row group of the per-episode tables (meta/episodes, the manifests). Written in one
# group, a 2000-episode table with its nested stats columns had the writer buffer every column's
# pages at once: +10 MiB per write at 2000 episodes, ~0 with groups of this size.
PER_EPISODE_ROW_GROUP = 256


def write_per_episode_table(table: pa.Table, path) -> None:
    """Write a table of one row per episode (meta/episodes, a manifest) in bounded row groups."""
    pq.write_table(table, path, row_group_size=PER_EPISODE_ROW_GROUP)


def release_freed_memory() -> None:
    """Give memory freed by a step back to the system: pyarrow's pool and glibc's heap keep freed
    pages for reuse, and with every step in one process the next step would start that much
    higher (measured 10-20 MiB per step at 2000 episodes)."""
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
