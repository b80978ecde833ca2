"""MP4 (ISO base media) files at the box level: one video track's sample tables read from the
headers alone, and one MP4 written whose samples are several files' samples back to back.

lib/video.py joins a camera's episode MP4s with it instead of remuxing packet by packet: only the
``moov`` box of each source is read (the media bytes are seeked over), the sample tables become
numpy arrays, and the output's sample bytes are copied file to file by the kernel
(``os.copy_file_range``). lib/validate.py reads the presentation times of output files the same way.

Exactness is the contract. FFmpeg's MP4 demuxer (which PyAV, LeRobot and our PyAV fallback use)
turns the tables into packets; :func:`demuxed_timeline` reproduces what it returns (dts, pts,
duration, key flags, the stream's start and duration) for the tables FFmpeg's own muxer writes,
and raises :class:`Mp4Unsupported` for anything else (several edits, leading or trailing samples
cut by the edit list, negative composition offsets, ...). Key flags are the sync table's; for
H.264 and AV1 FFmpeg re-derives them from the bitstream while demuxing, and the bytes are the
same in both files. :func:`plan_concatenation` lays out the
tables exactly as FFmpeg's MP4 muxer does when those packets are remuxed with their timestamps
shifted (stts from dts differences, ctts, stss, mdhd/tkhd/mvhd durations in the same time scales,
the same edit list), so demuxing the result gives the packets the PyAV remux gives, field by field.
The sample entry (``stsd``: codec configuration, colour, aspect) is the first source's, byte for
byte except the bit rates in ``btrt``, which describe the new file. The file is ``ftyp`` (the
first source's), ``moov``, then one ``mdat`` with a 64-bit size holding every source's samples
in order, one chunk per run of contiguous source bytes (usually one per source).

Memory: a checked source is kept as a :class:`Part` (its tables as runs where the file stores
runs, a few bytes per sample otherwise; no per-sample offsets) until its output file is written,
and an output file's tables are built with a few bytes per sample at most.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INT32_MAX = 0x7FFFFFFF
MOVIE_TIMESCALE = 1000  # FFmpeg's MP4 muxer writes mvhd/tkhd/elst durations in milliseconds
EDGE_BYTES = 16 * 1024  # bytes read at each end of a file at once (box headers, a trailing moov)
COPY_BLOCK = 64 * 1024 * 1024  # bytes per kernel copy call (the cancel flag is looked at in between)
FALLBACK_BUFFER = 1024 * 1024  # bytes per read when the kernel cannot copy between the two files

# Sample entry fourcc -> (codec name as FFmpeg calls it, configuration box). Codecs we have
# checked end to end; another fourcc makes the file unsupported (PyAV remux instead).
CODECS = {
    b"avc1": ("h264", b"avcC"),
    b"hvc1": ("hevc", b"hvcC"),
    b"hev1": ("hevc", b"hvcC"),
    b"av01": ("av1", b"av1C"),
}
HANDLER_KINDS = {b"vide": "video", b"soun": "audio", b"subt": "subtitle", b"sbtl": "subtitle",
                 b"text": "subtitle", b"clcp": "subtitle"}
# stbl children the reader understands; any other one (sgpd, sbgp, subs, ...) is noted and makes
# the track unsupported for concatenation, because the writer would drop it.
SAMPLE_TABLES = {b"stsd", b"stts", b"ctts", b"stss", b"sdtp", b"stsc", b"stsz", b"stz2", b"stco", b"co64"}
# sdtp bytes as FFmpeg's muxer writes them: 0x20 a sync sample (depends on no other), 0x10 one that
# depends on others, | 0x08 when no other sample depends on it (disposable).
SYNC_DEPENDENCY, OTHER_DEPENDENCY, DISPOSABLE = 0x20, 0x10, 0x08
FRAGMENT_BOXES = {b"moof", b"mvex", b"sidx", b"styp", b"mfra"}
# Table entry layouts (compiled once: parsing a dtype string costs more than reading a table).
RUNS = np.dtype((">u4", (2,)))  # stts, ctts: (sample count, value) rows
CHUNK_RUNS = np.dtype([("first_chunk", ">u4"), ("samples", ">u4"), ("description", ">u4")])  # stsc
EDIT, LONG_EDIT = struct.Struct(">Iii"), struct.Struct(">Qqi")  # elst version 0 / 1: duration, media time, rate
STSC_ENTRY = struct.Struct(">III")  # first chunk, samples per chunk, sample description index
U32, U64 = np.dtype(">u4"), np.dtype(">u8")
SHORT_TABLE = 64  # entries up to which a table's sum is taken in Python (see _total)
# Header fields, compiled once: every source's boxes are walked before anything is written.
BOX_HEADER, UINT32, UINT64 = struct.Struct(">I4s"), struct.Struct(">I"), struct.Struct(">Q")
# Bytes a box type may hold (printable ASCII and the (c) of QuickTime's metadata types): a type
# with another byte left after deleting these is not one. The usual top-level types skip the check.
TYPE_BYTES = bytes(range(32, 127)) + b"\xa9"
TOP_LEVEL_TYPES = {b"ftyp", b"free", b"skip", b"wide", b"mdat", b"moov", b"moof", b"mfra", b"sidx", b"styp", b"uuid"}


class Mp4Error(Exception):
    """Base of the errors below; ``str(e)`` says what is wrong in words."""


class Mp4Malformed(Mp4Error):
    """The box structure is broken: no moov, a box cut off by the end of the file, ..."""


class Mp4Unsupported(Mp4Error):
    """A valid file this module does not handle exactly; callers fall back to PyAV."""


# ----------------------------------------------------------------------------- reading


def _boxes(buf: bytes, start: int, end: int, where: str, limit: int = -1) -> list[tuple[bytes, int, int, int]]:
    """``(type, box start, payload start, box end)`` of each box in ``buf[start:end]`` (of the
    first ``limit`` ones when given: the boxes after them are not looked at).

    Inside a complete moov, an inconsistency makes the file unsupported rather than refused:
    FFmpeg tolerates some, and the PyAV fallback then decides whether the file can be read.
    """
    out = []
    pos = start
    while end - pos >= 8 and len(out) != limit:
        kind, header, size = _box_at(buf, pos, end, where)
        out.append((kind, pos, pos + header, pos + size))
        pos += size
    return out


def _box_at(buf: bytes, pos: int, end: int, where: str) -> tuple[bytes, int, int]:
    """``(type, header length, box size)`` of the box at ``pos``, which must end by ``end``."""
    size, kind = BOX_HEADER.unpack_from(buf, pos)
    header = 8
    if size < 8:
        size, header = _unusual_size(buf, pos, end, size, kind, where)
    if pos + size > end:
        raise Mp4Unsupported(f"{where}: box {kind.decode('latin-1')!r} claims {size} bytes, {end - pos} are left")
    return kind, header, size


def _children(buf: bytes, start: int, end: int, where: str) -> dict[bytes, list[tuple[int, int]]]:
    """Payload ranges ``(start, end)`` of the boxes in ``buf[start:end]``, by type.

    The walk of :func:`_boxes`, filling the dict as it goes: every container of every source's
    moov passes through here, and building the list first would make a source's check 6% dearer."""
    out: dict[bytes, list[tuple[int, int]]] = {}
    pos = start
    while end - pos >= 8:
        kind, header, size = _box_at(buf, pos, end, where)
        found = out.get(kind)
        if found is None:
            out[kind] = [(pos + header, pos + size)]
        else:
            found.append((pos + header, pos + size))
        pos += size
    return out


def _unusual_size(buf: bytes, pos: int, end: int, size: int, kind: bytes, where: str) -> tuple[int, int]:
    """(box size, header size) of a box whose 32-bit size is below 8: 1 means a 64-bit size
    follows the type, 0 that the box reaches ``end``; others are invalid."""
    if size == 1:
        if end - pos < 16:
            raise Mp4Unsupported(f"{where}: box {kind.decode('latin-1')!r} is cut off")
        size = UINT64.unpack_from(buf, pos + 8)[0]
        if size >= 16:
            return size, 16
    elif size == 0:
        return end - pos, 8
    raise Mp4Unsupported(f"{where}: box {kind.decode('latin-1')!r} claims {size} bytes, {end - pos} are left")


def _one(children: dict, kind: bytes, where: str, required: bool = True) -> tuple[int, int] | None:
    found = children.get(kind)
    if found is not None and len(found) == 1:
        return found[0]
    if found:
        raise Mp4Unsupported(f"{where}: {len(found)} {kind.decode('latin-1')} boxes")
    if required:
        raise Mp4Unsupported(f"{where}: no {kind.decode('latin-1')} box")
    return None


def _entries(buf: bytes, a: int, b: int, width: int, kind: str) -> int:
    """How many entries of ``width`` bytes the full box ``version/flags, count, entries...`` in
    ``buf[a:b]`` holds, checked against its size."""
    if b - a < 8:
        raise Mp4Unsupported(f"{kind} box too short")
    count = UINT32.unpack_from(buf, a + 4)[0]
    if count * width > b - a - 8:
        raise Mp4Unsupported(f"{kind} box declares {count} entries, holds {(b - a - 8) // width}")
    return count


def _table(buf: bytes, a: int, b: int, entry: np.dtype, kind: str) -> np.ndarray:
    """The entries of a full box ``version/flags, count, entries...`` as a big-endian array."""
    return np.frombuffer(buf, entry, _entries(buf, a, b, entry.itemsize, kind), a + 8)  # positional: half the cost


@dataclass
class Mp4Track:
    """One track: its headers and its samples in decode order (one array entry per sample)."""

    track_id: int
    handler: bytes  # b"vide", b"soun", ...
    timescale: int  # mdhd: ticks per second of the sample tables
    media_duration: int  # mdhd duration, in those ticks
    language: int  # mdhd packed ISO-639-2 code
    tkhd_matrix: bytes  # 36 bytes: the display matrix (rotation)
    tkhd_width: int  # 16.16 fixed point, as stored (display size)
    tkhd_height: int
    edits: list[tuple[int, int, int]]  # elst: (segment duration in movie ticks, media time, rate 16.16)
    has_edts: bool
    stsd: bytes  # the whole stsd box, header included
    btrt_at: int  # offset in stsd of the btrt box's three values (-1: none)
    sample_entries: int
    fourcc: bytes
    width: int  # from the visual sample entry
    height: int
    config_type: bytes  # avcC / hvcC / av1C, b"" when absent
    config: bytes  # its payload (FFmpeg's extradata for these codecs)
    sizes: np.ndarray  # uint32 bytes per sample
    # The other tables as stored (compact); the per-sample properties below expand them on demand.
    time_runs: np.ndarray  # stts: (sample count, duration) rows, uint32, rows with no sample left out
    composition_runs: np.ndarray | None  # ctts: (sample count, offset) rows, int64 (None: no ctts)
    ctts_version: int
    sync: np.ndarray | None  # stss: whether each sample is a sync sample (None: no stss, every sample is one)
    dependency: np.ndarray | None  # uint8 sdtp byte per sample (None: no sdtp)
    chunk_offsets: np.ndarray  # stco/co64: file offset per chunk, int64
    chunk_samples: np.ndarray  # stsc expanded: samples per chunk, int64
    description_indices: tuple[int, ...]  # stsc sample description indices used
    other_tables: tuple[str, ...]  # stbl children not in SAMPLE_TABLES (sgpd, sbgp, subs, ...)
    self_contained: bool  # dref: the samples are in this file

    @property
    def kind(self) -> str:
        return HANDLER_KINDS.get(self.handler, "data")

    @property
    def codec(self) -> str | None:
        entry = CODECS.get(self.fourcc)
        return entry[0] if entry else None

    @property
    def sample_count(self) -> int:
        return len(self.sizes)

    @property
    def deltas(self) -> np.ndarray:
        """stts duration per sample, uint32."""
        return np.repeat(self.time_runs[:, 1], self.time_runs[:, 0])

    @property
    def composition(self) -> np.ndarray | None:
        """ctts offset per sample, int64 (None: no ctts)."""
        runs = self.composition_runs
        return None if runs is None else np.repeat(runs[:, 1], runs[:, 0])

    @property
    def offsets(self) -> np.ndarray:
        """File offset per sample, int64."""
        n = self.sample_count
        in_track = np.cumsum(self.sizes, dtype=np.int64) - self.sizes  # where each sample would be in one chunk
        if n == 0 or len(self.chunk_offsets) == 1:
            return in_track + (self.chunk_offsets[0] if n else 0)
        first_sample = np.minimum(np.cumsum(self.chunk_samples) - self.chunk_samples, max(n - 1, 0))
        return np.repeat(self.chunk_offsets - in_track[first_sample], self.chunk_samples) + in_track

    @functools.cached_property
    def byte_runs(self) -> list[tuple[int, int, int]]:
        """``(file offset, bytes, samples)`` of each run of samples stored back to back: one per
        chunk, neighbouring chunks merged when the second starts where the first ends."""
        if len(self.chunk_offsets) == 1:  # an episode file: every sample in one chunk
            return [(int(self.chunk_offsets[0]), int(self.sizes.sum(dtype=np.int64)), self.sample_count)]
        used = self.chunk_samples > 0  # an empty chunk holds no byte, wherever it points
        samples = self.chunk_samples[used]
        firsts = np.cumsum(samples) - samples
        lengths = np.add.reduceat(self.sizes, firsts, dtype=np.int64) if len(firsts) else firsts
        starts = self.chunk_offsets[used]
        runs: list[tuple[int, int, int]] = []
        for start, length, count in zip(starts.tolist(), lengths.tolist(), samples.tolist()):
            if runs and runs[-1][0] + runs[-1][1] == start:
                at, size, held = runs[-1]
                runs[-1] = (at, size + length, held + count)
            else:
                runs.append((start, length, count))
        return runs


@dataclass
class Mp4File:
    path: Path
    size: int  # bytes on disk when read
    mtime_ns: int
    ftyp: bytes  # the whole ftyp box (b"" when absent)
    movie_timescale: int
    movie_duration: int
    tracks: list[Mp4Track]
    fragmented: bool
    top_level: tuple[str, ...]  # top-level box types in file order

    def video_tracks(self) -> list[Mp4Track]:
        return [t for t in self.tracks if t.handler == b"vide"]

    def samples_within_file(self, track: Mp4Track) -> int:
        """How many samples lie entirely inside the file (fewer than all: a truncated file)."""
        for start, length, _ in track.byte_runs:
            if start + length > self.size:
                return int(np.count_nonzero(track.offsets + track.sizes <= self.size))
        return track.sample_count  # the usual case, without an offset per sample


class _FileBytes:
    """Reads of one file, served from its first and last ``EDGE_BYTES`` when they cover them: an
    episode file's top-level box headers and its index sit there, so most files take two reads
    (one when the index comes first and the media bytes reach the end)."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.head = os.pread(fd, min(size, EDGE_BYTES), 0)
        self.tail_start = max(len(self.head), size - EDGE_BYTES)
        self.tail: bytes | None = None  # read when first needed

    def read(self, pos: int, n: int) -> bytes:
        end = pos + n if pos + n < self.size else self.size
        if end <= len(self.head):
            return self.head[pos:end]
        if pos >= self.tail_start:
            if self.tail is None:
                self.tail = os.pread(self.fd, self.size - self.tail_start, self.tail_start)
            return self.tail[pos - self.tail_start:end - self.tail_start]
        return os.pread(self.fd, end - pos, pos)


def read_mp4(path: Path | str) -> Mp4File:
    """Read the box tree of ``path`` without reading its media bytes.

    Raises :class:`Mp4Malformed` when the file cannot be an MP4 (no moov, moov cut off),
    :class:`Mp4Unsupported` when it is one we do not handle exactly, ``OSError`` when unreadable.
    """
    path = path if isinstance(path, Path) else Path(path)  # Path(Path) re-parses: costly per file
    fd = os.open(path, os.O_RDONLY)  # no file object: its buffer would not be used
    try:
        st = os.fstat(fd)
        size = st.st_size
        data = _FileBytes(fd, size)
        top: list[tuple[bytes, int, int]] = []  # (type, start, size) in file order
        moovs, moov_box = 0, (0, 0, 0)  # how many, and (start, header, size) of the last
        ftyp_box = None  # (start, size) of the first
        fragmented = False
        pos = 0
        while size - pos >= 8:
            head = data.read(pos, 16)
            box_size, kind = BOX_HEADER.unpack_from(head)
            header = 8
            if box_size == 1:
                if len(head) < 16:
                    break
                box_size = UINT64.unpack_from(head, 8)[0]
                header = 16
            elif box_size == 0:
                box_size = size - pos
            if box_size < header or (kind not in TOP_LEVEL_TYPES and kind.translate(None, TYPE_BYTES)):
                if moovs:
                    break  # trailing bytes after a complete index: readers ignore them
                raise Mp4Malformed(f"not an MP4 box structure at byte {pos} (type {kind!r}, size {box_size})")
            if kind == b"moov":
                moovs += 1
                moov_box = (pos, header, box_size)
            elif kind == b"ftyp":
                ftyp_box = ftyp_box or (pos, box_size)
            elif kind in FRAGMENT_BOXES:
                fragmented = True
            top.append((kind, pos, box_size))
            pos += box_size
        kinds = tuple([k.decode("latin-1") for k, _, _ in top])
        if not moovs:
            cut = [k.decode("latin-1") for k, s, n in top if s + n > size]
            why = f" ({cut[0]} box cut off by the end of the file)" if cut else ""
            raise Mp4Malformed(f"no moov box (the index of the samples){why}; top-level boxes: "
                               f"{', '.join(kinds) or 'none'}")
        if moovs > 1:
            raise Mp4Unsupported(f"{moovs} moov boxes")
        start, header, box_size = moov_box
        if start + box_size > size:
            raise Mp4Malformed(f"the moov box is cut off: it claims {box_size} bytes, the file ends "
                               f"{size - start} bytes after its start")
        moov = data.read(start + header, box_size - header)
        ftyp = data.read(*ftyp_box) if ftyp_box and ftyp_box[1] <= 4096 else b""
    finally:
        os.close(fd)
    try:
        return _parse_moov(path, size, st.st_mtime_ns, ftyp, moov, fragmented, kinds)
    except (struct.error, ValueError, IndexError) as e:  # a box shorter than its fields
        raise Mp4Unsupported(f"a box inside moov is too short for its fields ({e})") from e


def _parse_moov(path: Path, size: int, mtime_ns: int, ftyp: bytes, moov: bytes, fragmented: bool,
                kinds: tuple[str, ...]) -> Mp4File:
    top = _children(moov, 0, len(moov), "moov")
    if b"mvex" in top:
        fragmented = True
    mvhd = _one(top, b"mvhd", "moov")
    a, _ = mvhd
    version = moov[a]
    if version == 1:
        timescale, duration = struct.unpack_from(">IQ", moov, a + 20)
    else:
        timescale, duration = struct.unpack_from(">II", moov, a + 12)
    tracks = [_parse_trak(moov, ta, tb, i, size) for i, (ta, tb) in enumerate(top.get(b"trak", []))]
    return Mp4File(path=path, size=size, mtime_ns=mtime_ns, ftyp=ftyp, movie_timescale=timescale,
                   movie_duration=duration, tracks=tracks, fragmented=fragmented, top_level=kinds)


def _parse_trak(buf: bytes, start: int, end: int, index: int, file_size: int) -> Mp4Track:
    where = f"track {index + 1}"
    trak = _children(buf, start, end, where)
    a, _ = _one(trak, b"tkhd", where)
    version = buf[a]
    if version == 1:
        track_id = struct.unpack_from(">I", buf, a + 20)[0]
        rest = a + 36
    else:
        track_id = struct.unpack_from(">I", buf, a + 12)[0]
        rest = a + 24
    # reserved(8) layer(2) group(2) volume(2) reserved(2) matrix(36) width(4) height(4)
    matrix = bytes(buf[rest + 16: rest + 52])
    tkhd_width, tkhd_height = struct.unpack_from(">II", buf, rest + 52)

    edits: list[tuple[int, int, int]] = []
    edts = _one(trak, b"edts", where, required=False)
    if edts is not None:
        elst = _one(_children(buf, edts[0], edts[1], where), b"elst", where, required=False)
        if elst is not None:
            ea, eb = elst
            entry = LONG_EDIT if buf[ea] == 1 else EDIT
            count = _entries(buf, ea, eb, entry.size, "elst")
            edits = list(entry.iter_unpack(buf[ea + 8:ea + 8 + count * entry.size]))

    ma, mb = _one(trak, b"mdia", where)
    mdia = _children(buf, ma, mb, where)
    ha, _ = _one(mdia, b"hdlr", where)
    handler = bytes(buf[ha + 8: ha + 12])
    da, _ = _one(mdia, b"mdhd", where)
    if buf[da] == 1:
        timescale, media_duration, language = struct.unpack_from(">IQH", buf, da + 20)
    else:
        timescale, media_duration, language = struct.unpack_from(">IIH", buf, da + 12)
    ia, ib = _one(mdia, b"minf", where)
    minf = _children(buf, ia, ib, where)
    self_contained = _self_contained(buf, minf, where)
    sa, sb = _one(minf, b"stbl", where)
    stbl = _children(buf, sa, sb, where)

    stsd_a, stsd_b = _one(stbl, b"stsd", where)
    stsd_start = stsd_a - 8
    if struct.unpack_from(">I", buf, stsd_start)[0] != stsd_b - stsd_start:
        raise Mp4Unsupported(f"{where}: stsd box with a 64-bit size")
    stsd = bytes(buf[stsd_start:stsd_b])
    entries = struct.unpack_from(">I", buf, stsd_a + 4)[0]
    fourcc, width, height, config_type, config, btrt_at = b"", 0, 0, b"", b"", -1
    first = _boxes(buf, stsd_a + 8, stsd_b, f"{where} stsd", limit=1)
    if first:
        fourcc, _, ea, eb = first[0]
        if handler == b"vide" and eb - ea >= 78:
            # visual sample entry: 24 bytes of fields, width, height, 50 more bytes, then boxes
            width, height = struct.unpack_from(">HH", buf, ea + 24)
            wanted = CODECS.get(fourcc, (None, None))[1]
            for kind, _, ca, cb in _boxes(buf, ea + 78, eb, f"{where} sample entry"):
                if kind == wanted:
                    config_type, config = kind, bytes(buf[ca:cb])
                elif kind == b"btrt" and cb - ca == 12:
                    btrt_at = ca - stsd_start

    sz = _one(stbl, b"stsz", where, required=False)
    if sz is not None:
        za, zb = sz
        sample_size, count = struct.unpack_from(">II", buf, za + 4)
        if sample_size:
            # a count the file cannot hold would have np.full allocate up to 16 GiB
            if count * sample_size > file_size:
                raise Mp4Unsupported(f"{where}: stsz declares {count} samples of {sample_size} bytes, "
                                     f"more than the file's {file_size} bytes")
            sizes = np.full(count, sample_size, np.uint32)
        else:
            if count * 4 > zb - za - 12:
                raise Mp4Unsupported(f"{where}: stsz declares {count} samples, holds {(zb - za - 12) // 4}")
            sizes = np.frombuffer(buf, U32, count, za + 12).astype(np.uint32)
    else:
        z2 = _one(stbl, b"stz2", where)
        za, zb = z2
        field_size, count = buf[za + 7], struct.unpack_from(">I", buf, za + 8)[0]
        if field_size == 16:
            sizes = np.frombuffer(buf, ">u2", count, za + 12).astype(np.uint32)
        elif field_size == 8:
            sizes = np.frombuffer(buf, "u1", count, za + 12).astype(np.uint32)
        elif field_size == 4:
            packed = np.frombuffer(buf, "u1", (count + 1) // 2, za + 12)
            sizes = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:count].astype(np.uint32)
        else:
            raise Mp4Unsupported(f"{where}: stz2 field size {field_size}")
    n = len(sizes)

    time_runs = _runs(buf, *_one(stbl, b"stts", where), "stts", np.uint32, n, where)

    composition_runs, ctts_version = None, 0
    ct = _one(stbl, b"ctts", where, required=False)
    if ct is not None:
        ctts_version = buf[ct[0]]
        composition_runs = _runs(buf, *ct, "ctts", np.int64, n, where)
        if ctts_version == 1:  # the offsets are signed: sign-extend the 32-bit values
            composition_runs[:, 1] = (composition_runs[:, 1] ^ 0x80000000) - 0x80000000

    sync = None
    ss = _one(stbl, b"stss", where, required=False)
    if ss is not None:
        numbered = np.zeros(n + 1, bool)  # by sample number: 0 names no sample
        try:
            numbered[_table(buf, *ss, U32, "stss").astype(np.intp)] = True  # native indices: twice as fast
            valid = not numbered[0]
        except IndexError:  # a number over n
            valid = False
        if not valid:
            raise Mp4Unsupported(f"{where}: stss names samples outside 1..{n}")
        sync = numbered[1:]

    dependency = None
    dt = _one(stbl, b"sdtp", where, required=False)
    if dt is not None:  # a copy: a view would keep the whole moov alive
        dependency = np.frombuffer(buf, np.uint8, dt[1] - dt[0] - 4, dt[0] + 4).copy()

    co = _one(stbl, b"co64", where, required=False)
    chunk_offsets = (_table(buf, *co, U64, "co64") if co is not None
                     else _table(buf, *_one(stbl, b"stco", where), U32, "stco")).astype(np.int64)
    ca, cb = _one(stbl, b"stsc", where)
    n_chunks = len(chunk_offsets)
    if _entries(buf, ca, cb, STSC_ENTRY.size, "stsc") == 1 and UINT32.unpack_from(buf, ca + 8)[0] == 1:
        # what FFmpeg writes for equal chunks: checked from its three numbers
        _, per_chunk, description = STSC_ENTRY.unpack_from(buf, ca + 8)
        if per_chunk * n_chunks != n:
            raise Mp4Unsupported(f"{where}: the chunks hold {per_chunk * n_chunks} samples, stsz has {n}")
        chunk_samples, indices = np.empty(n_chunks, np.int64), (description,)
        chunk_samples.fill(per_chunk)  # np.full is Python code around these two calls
    else:
        chunk_samples, indices = _chunk_samples(_table(buf, ca, cb, CHUNK_RUNS, "stsc"), n_chunks, n, where)

    others = stbl.keys() - SAMPLE_TABLES
    other = tuple(sorted(k.decode("latin-1") for k in others)) if others else ()
    return Mp4Track(
        track_id=track_id, handler=handler, timescale=timescale, media_duration=media_duration,
        language=language, tkhd_matrix=matrix, tkhd_width=tkhd_width, tkhd_height=tkhd_height,
        edits=edits, has_edts=edts is not None, stsd=stsd, btrt_at=btrt_at, sample_entries=entries, fourcc=fourcc,
        width=width, height=height, config_type=config_type, config=config, sizes=sizes, time_runs=time_runs,
        composition_runs=composition_runs, ctts_version=ctts_version, sync=sync,
        dependency=dependency, chunk_offsets=chunk_offsets, chunk_samples=chunk_samples,
        description_indices=indices, other_tables=other, self_contained=self_contained,
    )


def _self_contained(buf: bytes, minf: dict, where: str) -> bool:
    dinf = _one(minf, b"dinf", where, required=False)
    if dinf is None:
        return True
    dref = _one(_children(buf, dinf[0], dinf[1], where), b"dref", where, required=False)
    if dref is None:
        return True
    entries = _boxes(buf, dref[0] + 8, dref[1], f"{where} dref")
    # flag 1 on a 'url ' entry: the media data is in this file
    return len(entries) == 1 and entries[0][0] in (b"url ", b"urn ") and buf[entries[0][2] + 3] & 1 == 1


def _runs(buf: bytes, a: int, b: int, kind: str, value_type, n: int, where: str) -> np.ndarray:
    """(sample count, value) rows of an stts or ctts box in native integers, runs of no sample
    left out, after checking that they cover the track's ``n`` samples."""
    rows = _table(buf, a, b, RUNS, kind).astype(value_type)
    counts = rows[:, 0]
    covered = _total(counts)
    if covered != n:
        raise Mp4Unsupported(f"{where}: {kind} covers {covered} samples, stsz has {n}")
    return rows if np.count_nonzero(counts) == len(rows) else rows[counts > 0]


def _total(values: np.ndarray) -> int:
    """The exact sum of unsigned ``values``: a short table (often a single run) through Python
    integers, which costs a fraction of a numpy reduction."""
    return sum(values.tolist()) if len(values) <= SHORT_TABLE else int(values.sum(dtype=np.uint64))


def _run_total(runs: np.ndarray) -> int:
    """The exact sum of count x value over unsigned (count, value) rows: the samples' summed durations."""
    if len(runs) <= SHORT_TABLE:
        total = 0
        for count, value in runs.tolist():
            total += count * value
        return total
    return int(runs[:, 0].astype(np.uint64) @ runs[:, 1].astype(np.uint64))


def _chunk_samples(stsc: np.ndarray, n_chunks: int, n: int, where: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Samples per chunk from the stsc runs, and the sample description indices they use."""
    first = stsc["first_chunk"].astype(np.int64)
    if len(first) == 0:
        if n:
            raise Mp4Unsupported(f"{where}: samples but an empty stsc")
        return np.zeros(n_chunks, np.int64), ()
    if first[0] != 1 or np.any(np.diff(first) <= 0) or first[-1] > max(n_chunks, 1):
        raise Mp4Unsupported(f"{where}: stsc chunk numbers out of order or beyond the {n_chunks} chunks")
    # entry i covers chunks first[i] .. first[i + 1] - 1 (the last one up to the last chunk)
    chunks_per_entry = np.diff(np.append(first, n_chunks + 1))
    samples_in_chunk = np.repeat(stsc["samples"].astype(np.int64), chunks_per_entry)
    if int(samples_in_chunk.sum()) != n:
        raise Mp4Unsupported(f"{where}: the chunks hold {int(samples_in_chunk.sum())} samples, stsz has {n}")
    return samples_in_chunk, tuple(sorted(set(stsc["description"].tolist())))


# ----------------------------------------------------------------------------- timestamps as demuxed


def _rescale_nearest(value: int, to_scale: int, from_scale: int) -> int:
    """``value`` ticks of ``from_scale`` in ``to_scale`` ticks, halves away from zero (av_rescale)."""
    q, r = divmod(abs(value) * to_scale, from_scale)
    out = q + (1 if 2 * r >= from_scale else 0)
    return out if value >= 0 else -out


def _rescale_up(value: int, to_scale: int, from_scale: int) -> int:
    return -((-value * to_scale) // from_scale)


def _rescale_down(value: int, to_scale: int, from_scale: int) -> int:
    return (value * to_scale) // from_scale


def _decode_times(durations: np.ndarray, shift: int) -> np.ndarray:
    """Decode time of each sample (int64): the durations before it, minus ``shift``."""
    out = np.empty(len(durations), np.int64)
    out[:1] = 0
    out[1:] = durations[:-1]
    np.cumsum(out, out=out)  # in place: a cumsum to another type would copy the input first
    out -= shift
    return out


@dataclass(eq=False, slots=True)  # not frozen: a frozen dataclass sets every field through object.__setattr__
class Timeline:
    """The packets FFmpeg's demuxer returns for a track, in the track's time base (1/timescale).

    Per sample, for the one file being looked at: a camera's checked sources keep their
    :class:`Part` instead. Only the duration runs and the shift are stored; durations, dts and
    pts are computed when asked for."""

    time_runs: np.ndarray  # stts (samples, duration) rows (the track's array)
    composition: np.ndarray | None  # ctts offset per packet (the track's array; None: pts = dts)
    shift: int  # subtracted from the table's decode and composition times
    keyframes: np.ndarray  # bool
    disposable: np.ndarray | None  # bool: no other frame depends on it (sdtp); None: none is
    start: int  # the stream's start time (pts of the first packet, the smallest)
    duration: int  # the stream's duration as FFmpeg reports it
    total: int  # the packet durations summed
    end: int  # the latest presentation time + duration

    @property
    def frames(self) -> int:
        return len(self.keyframes)

    @property
    def durations(self) -> np.ndarray:
        """Duration of each packet (uint32)."""
        return np.repeat(self.time_runs[:, 1], self.time_runs[:, 0])

    @property
    def dts(self) -> np.ndarray:
        return _decode_times(self.durations, self.shift)

    @property
    def pts(self) -> np.ndarray:
        pts = self.dts
        if self.composition is not None:
            pts += self.composition  # in place: the decode times are a fresh array
        return pts


def demuxed_timeline(movie: Mp4File, track: Mp4Track) -> Timeline:
    """What FFmpeg's MP4 demuxer makes of ``track``: every sample becomes a packet.

    Covered: no edit list, or one edit at normal rate that starts at or before the first
    presentation time and reaches past the last one (what FFmpeg's muxer writes, including the
    shift that B-frames need). FFmpeg then moves the timeline so the first frame is at 0, takes
    packet durations from stts and reports the smallest of the mdhd duration, the stts total and
    the edit's duration as the stream's. Anything else raises :class:`Mp4Unsupported`.
    """
    n = track.sample_count
    if n == 0:
        raise Mp4Unsupported("the track has no samples")
    runs = track.time_runs  # unsigned, a sample or more each (n > 0: at least one)
    if np.count_nonzero(runs[:, 1]) < len(runs):
        raise Mp4Unsupported("a sample with zero duration (stts)")
    cts = track.composition
    if cts is not None and int(cts.min()) < 0:
        raise Mp4Unsupported("negative composition offsets (ctts version 1)")
    total = _run_total(runs)
    keyframes = track.sync if track.sync is not None else np.ones(n, bool)
    if cts is None:
        # pts = dts, which increase (every duration is positive): the first sample is presented
        # first, the last one last, and each one ends where the next starts. No per-sample
        # times are needed.
        pts = deltas = None
        first_pts, last_pts, end_pts = 0, total - int(runs[-1, 1]), total
    else:
        deltas = track.deltas
        pts = _decode_times(deltas, 0)
        pts += cts
        ends = pts + deltas  # each sample's presentation end
        first_pts, last_pts, end_pts = int(pts[0]), int(pts.max()), int(ends.max())
    disposable = None
    if track.dependency is not None:
        dep = track.dependency
        canonical = np.where(keyframes, SYNC_DEPENDENCY, OTHER_DEPENDENCY)
        if len(dep) != n or not np.array_equal(dep & ~np.uint8(DISPOSABLE), canonical):
            raise Mp4Unsupported("sdtp values other than FFmpeg's (sync / depends / disposable)")
        disposable = (dep & DISPOSABLE) != 0
    if pts is not None and n > 1 and first_pts >= int(pts[1:].min()):
        raise Mp4Unsupported("the first sample is not the first one presented")
    duration = min(track.media_duration, total)
    shift = 0
    if track.has_edts or track.edits:
        if len(track.edits) != 1:
            raise Mp4Unsupported(f"an edit list with {len(track.edits)} entries")
        segment, media_time, rate = track.edits[0]
        if rate != 0x10000 or media_time < 0 or segment <= 0 or movie.movie_timescale <= 0:
            raise Mp4Unsupported(f"edit list entry (duration {segment}, media time {media_time}, "
                                 f"rate {rate / 65536:g})")
        span = _rescale_nearest(segment, track.timescale, movie.movie_timescale)
        end = media_time + span
        if first_pts < media_time or last_pts >= end:
            raise Mp4Unsupported("the edit list cuts samples off")
        if not keyframes[0]:
            raise Mp4Unsupported("the edit list starts on a sample that is not a sync sample")
        # FFmpeg stops reading the table at the first (with ctts: second) sync sample whose
        # presentation reaches the end of the edit; later samples would be dropped. Without
        # ctts only the last sample can: the others end where a later one starts, before it.
        if pts is not None:
            ends[-1] = int(pts[-1]) + span  # the last sample is taken to last the edit's span
            reaching = np.flatnonzero(keyframes & (ends >= end))
            if len(reaching) > 1 and int(reaching[1]) < n - 1:
                raise Mp4Unsupported("the edit list ends before the last samples")
        shift = first_pts  # FFmpeg moves the first presented frame to 0
        duration = min(duration, span)
    if duration <= 0:
        raise Mp4Unsupported("the track has no duration")
    return Timeline(time_runs=runs, composition=cts, shift=shift, keyframes=keyframes, disposable=disposable,
                    start=first_pts - shift, duration=int(duration), total=total, end=end_pts - shift)


def presentation_times(path: Path | str) -> tuple[np.ndarray, float, int, int]:
    """Sorted presentation times in seconds of the first video track's packets, as FFmpeg
    demuxes them, plus the time base and (samples, samples inside the file): fewer inside than
    samples means a truncated file. Raises :class:`Mp4Error` when the headers do not tell."""
    timeline, timescale, samples, inside = _first_video_timeline(path)
    tb = 1.0 / timescale
    times = timeline.pts.astype(np.float64)
    times *= tb  # in place: an output file has hundreds of thousands of samples
    times.sort()
    return times, tb, samples, inside


def _first_video_timeline(path: Path | str) -> tuple[Timeline, int, int, int]:
    """The first video track's timeline, time scale, samples and samples inside the file; the
    parsed file (sizes, tables) is freed on return, before the times are computed."""
    movie = read_mp4(path)
    if movie.fragmented:
        raise Mp4Unsupported("fragmented MP4 (moof)")
    videos = movie.video_tracks()
    if not videos:
        raise Mp4Unsupported("no video track")
    track = videos[0]
    return demuxed_timeline(movie, track), track.timescale, track.sample_count, movie.samples_within_file(track)


# ----------------------------------------------------------------------------- writing


def _length(pieces: list) -> int:
    return sum(p.nbytes if isinstance(p, np.ndarray) else len(p) for p in pieces)


def _box(kind: bytes, *payload) -> list:
    """A box as a list of pieces (byte strings and big-endian arrays) to write one after the
    other; ``payload`` items are pieces or inner boxes. The big tables stay the arrays they were
    built in instead of being copied into one byte string at each level of nesting."""
    pieces: list = []
    for item in payload:
        if isinstance(item, list):
            pieces.extend(item)
        else:
            pieces.append(item)
    return [struct.pack(">I4s", 8 + _length(pieces), kind), *pieces]


def _full_box(kind: bytes, version: int, flags: int, *payload) -> list:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def _run_lengths(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(counts, values) of the runs of equal consecutive values."""
    if len(values) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.flatnonzero(values[1:] != values[:-1]) + 1])
    counts = np.diff(np.concatenate([starts, [len(values)]]))
    return counts, values[starts]


def _merged_runs(counts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs ``(counts, values)`` with the empty ones dropped and equal neighbours joined: what
    :func:`_run_lengths` gives for the values they stand for."""
    keep = counts > 0
    counts, values = counts[keep], values[keep]
    if len(values) == 0:
        return counts, values
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    return np.add.reduceat(counts, starts), values[starts]


def _pairs(first: np.ndarray, second: np.ndarray, dtype: str = ">u4") -> np.ndarray:
    out = np.empty((len(first), 2), dtype)
    out[:, 0], out[:, 1] = first, second
    return out


def _stsd_without_bit_rates(track: Mp4Track) -> bytes:
    """The sample description with the btrt values zeroed (they describe one file's bit rate)."""
    at = track.btrt_at
    return track.stsd if at < 0 else track.stsd[:at] + bytes(12) + track.stsd[at + 12:]


@dataclass(frozen=True)
class TrackHeader:
    """What an output file takes from its first source's headers besides the samples. One
    encoder writes them alike for a camera's files, which then share one object."""

    timescale: int
    language: int
    tkhd_matrix: bytes
    tkhd_width: int
    tkhd_height: int
    ftyp: bytes
    description: bytes  # the stsd box with the btrt values zeroed
    btrt_at: int  # offset in it of the btrt box's three values (-1: none)


@functools.lru_cache(maxsize=64)
def _shared_header(*fields) -> TrackHeader:
    return TrackHeader(*fields)


def _compact(values: np.ndarray, limit: int, small, large) -> np.ndarray:
    """``values`` (none negative) as ``small`` when all are at most ``limit``, else as ``large``."""
    return values.astype(small if int(np.maximum.reduce(values, initial=0)) <= limit else large, copy=False)


@dataclass(eq=False, slots=True)  # not frozen, as Timeline: one is made per source
class Part:
    """One checked source file as it goes into an output file: what planning and copying need,
    in compact form. A camera holds one per episode from the check of every source until its
    files are written, so no per-sample table is wider than it must be, the tables the files
    store as runs stay runs, and nothing else of the parsed file (moov, Mp4Track) is kept."""

    path: Path
    size: int  # bytes on disk when checked
    mtime_ns: int
    header: TrackHeader
    bit_rate: int  # what FFmpeg's demuxer reports: its bytes * 8 / its stts duration in seconds, rounded down
    sizes: np.ndarray  # bytes per sample: uint16 when every sample fits, else uint32
    time_runs: np.ndarray  # (samples, duration) runs of the packet durations (stts), uint32
    composition: np.ndarray | None  # composition offset per sample: int32 if all fit, else int64; None: all 0
    # Flags as bits (np.packbits; a key frame every other frame would cost 2 bytes a frame as indices)
    sync: np.ndarray | None  # whether each sample is a key sample; None: every one is
    disposable: np.ndarray | None  # whether each sample is disposable (sdtp); None: none is
    byte_runs: tuple[tuple[int, int, int], ...]  # (source offset, bytes, samples) of samples stored back to back
    shift: int  # the timeline's shift (see Timeline)
    start: int  # the stream's start time and duration as demuxed
    duration: int
    last_dts: int  # decode time of the last sample, in the timeline (after the shift)
    end: int  # the latest presentation time + duration, in the timeline

    @classmethod
    def of(cls, movie: Mp4File, track: Mp4Track, timeline: Timeline) -> "Part":
        at = track.btrt_at
        header = _shared_header(track.timescale, track.language, track.tkhd_matrix, track.tkhd_width,
                                track.tkhd_height, movie.ftyp, _stsd_without_bit_rates(track), at)
        cts = timeline.composition
        keyframes, disposable = timeline.keyframes, timeline.disposable
        byte_runs = tuple(track.byte_runs)
        payload = 0  # the runs hold every sample once
        for _, length, _ in byte_runs:
            payload += length
        return cls(
            path=movie.path, size=movie.size, mtime_ns=movie.mtime_ns, header=header,
            bit_rate=payload * 8 * track.timescale // timeline.total,
            sizes=_compact(track.sizes, 0xFFFF, np.uint16, np.uint32),
            time_runs=track.time_runs,
            composition=_compact(cts, INT32_MAX, np.int32, np.int64) if cts is not None and cts.any() else None,
            sync=None if np.count_nonzero(keyframes) == len(keyframes) else np.packbits(keyframes),
            disposable=np.packbits(disposable) if disposable is not None and disposable.any() else None,
            byte_runs=byte_runs, shift=timeline.shift, start=timeline.start, duration=timeline.duration,
            last_dts=timeline.total - int(timeline.time_runs[-1, 1]) - timeline.shift, end=timeline.end,
        )

    @property
    def frames(self) -> int:
        return len(self.sizes)

    def keyframes(self) -> np.ndarray:
        """Whether each sample is a key sample (bool)."""
        if self.sync is None:
            return np.ones(self.frames, bool)
        return np.unpackbits(self.sync, count=self.frames).view(bool)

    def key_count(self) -> int:
        return self.frames if self.sync is None else int(np.unpackbits(self.sync, count=self.frames).sum())

    def decode_times(self) -> np.ndarray:
        """Decode time of every sample in the timeline (int64)."""
        return _decode_times(np.repeat(self.time_runs[:, 1], self.time_runs[:, 0]), self.shift)


@dataclass
class ConcatPlan:
    """Everything about one output file but its sample bytes: the index and where bytes go."""

    parts: list[Part]  # their byte runs are copied in order
    begins: list[int]  # per part: where its time range starts in the file (ticks): the parts before it
    head: list  # ftyp + moov + mdat header as pieces (bytes, big-endian arrays), written before the samples
    frames: int
    size: int  # bytes of the finished file


def concatenation_obstacle(parts: list[Part]) -> str | None:
    """Why :func:`plan_concatenation` would refuse ``parts`` (None: it would not), from a few
    numbers per part: a camera decides on box copy for all its files before planning the first."""
    first = parts[0]
    timescale, description = first.header.timescale, first.header.description
    for p in parts[1:]:
        if p.header.timescale != timescale:
            return f"{p.path.name}: time scale {p.header.timescale}, not {timescale}"
        if p.header is not first.header and p.header.description != description:
            return f"{p.path.name}: its sample description differs from {first.path.name}'s"
    # Decode times increase inside each part (every duration is positive); between two parts
    # the first sample of the second must come after the last of the first.
    offset, before, last_dts = 0, 0, None
    for p in parts:
        if last_dts is not None and offset - p.start - p.shift <= last_dts:
            return f"decode times would not increase at sample {before} of the joined file"
        last_dts = offset - p.start + p.last_dts
        before += p.frames
        offset += p.duration
    return None


def plan_concatenation(parts: list[Part]) -> ConcatPlan:
    """Lay out the file FFmpeg's MP4 muxer would write for the parts' packets, each part's
    timestamps shifted so that it starts where the parts before it end (their summed durations).

    Raises :class:`Mp4Unsupported` when the parts cannot share one sample description or the
    shifted decode times would not increase (the muxer would refuse those packets). The tables
    are built from the parts' runs where the file stores runs, and per sample with one numpy
    call per part at most (stsz, stss, sdtp) otherwise.
    """
    if not parts:
        raise ValueError("nothing to concatenate")
    obstacle = concatenation_obstacle(parts)
    if obstacle is not None:
        raise Mp4Unsupported(obstacle)
    first = parts[0]
    header = first.header
    timescale = header.timescale
    n = sum(p.frames for p in parts)
    firsts = np.cumsum([0] + [p.frames for p in parts[:-1]]).tolist()  # index of each part's first sample
    begins, shifts, offset = [], [], 0
    for p in parts:
        begins.append(offset)
        shifts.append(offset - p.start)
        offset += p.duration
    first_dts = [s - p.shift for p, s in zip(parts, shifts)]

    # The muxer's bookkeeping (FFmpeg movenc): start_dts is the first dts, start_cts the first
    # composition offset lowered by those of packets decoded at or before 0, end_pts the latest
    # pts + duration, and the last sample lasts its packet's duration.
    start_dts = first_dts[0]
    first_cts = int(first.composition[0]) if first.composition is not None else 0
    start_cts = first_cts
    for p, dts0 in zip(parts, first_dts):
        if dts0 > 0:
            break  # decode times increase: no later sample is decoded at or before 0
        early = p.decode_times() + (dts0 + p.shift) <= 0
        if p.composition is not None:
            start_cts = min(start_cts, int(p.composition[early].min()))
        else:
            start_cts = min(start_cts, 0)
    end_pts = max(s + p.end for p, s in zip(parts, shifts))
    # stts: each part's durations, but its last sample lasts until the next part's first one
    rows = np.concatenate([p.time_runs for p in parts]).astype(np.int64)
    lasts = np.cumsum([len(p.time_runs) for p in parts])[:-1] - 1
    gaps = np.asarray([first_dts[i + 1] - (shifts[i] + parts[i].last_dts) for i in range(len(parts) - 1)], np.int64)
    rows[lasts, 0] -= 1
    rows = np.insert(rows, lasts + 1, np.stack([np.ones_like(gaps), gaps], axis=1), axis=0)
    stts_counts, stts_values = _merged_runs(rows[:, 0], rows[:, 1])
    track_duration = int((stts_counts * stts_values).sum())
    media_duration = end_pts - (start_dts + start_cts)
    track_length = _rescale_up(end_pts, MOVIE_TIMESCALE, timescale)  # tkhd/mvhd: from 0 with an edit list

    edit_ct = start_cts
    if start_cts != first_cts and start_dts >= 0:
        edit_ct = first_cts
    edit_duration = _rescale_up(media_duration, MOVIE_TIMESCALE, timescale)
    delay = _rescale_down(start_dts + edit_ct, MOVIE_TIMESCALE, timescale)
    if delay > 0:  # an empty edit delays the presentation
        edits = [(delay, -1), (edit_duration, edit_ct)]
    else:
        edits = [(edit_duration + delay, -min(start_dts, 0))]
    elst_version = 1 if edit_duration >= INT32_MAX or delay >= INT32_MAX else 0
    elst = _full_box(b"elst", elst_version, 0, struct.pack(">I", len(edits)), b"".join(
        struct.pack(">QqI" if elst_version else ">IiI", d, m, 0x10000) for d, m in edits))

    run_lengths = np.fromiter((length for p in parts for _, length, _ in p.byte_runs), np.int64)
    payload = int(run_lengths.sum())
    stbl = [_with_bit_rates(first, payload, track_duration)]
    stbl.append(_full_box(b"stts", 0, 0, struct.pack(">I", len(stts_counts)), _pairs(stts_counts, stts_values)))
    # the key frames of the whole file, each part's unpacked once (None: every frame is one)
    keyframes = np.concatenate([p.keyframes() for p in parts]) if any(p.sync is not None for p in parts) else None
    if keyframes is not None:
        numbers = np.flatnonzero(keyframes)
        if 0 < len(numbers) < n:
            numbers += 1
            stbl.append(_full_box(b"stss", 0, 0, struct.pack(">I", len(numbers)), numbers.astype(">u4")))
    if any(p.disposable is not None for p in parts):  # the muxer writes sdtp when a packet is flagged disposable
        dependency = (np.full(n, SYNC_DEPENDENCY, np.uint8) if keyframes is None else
                      np.where(keyframes, np.uint8(SYNC_DEPENDENCY), np.uint8(OTHER_DEPENDENCY)))
        for p, base in zip(parts, firsts):
            if p.disposable is not None:
                dependency[base:base + p.frames] |= np.unpackbits(p.disposable, count=p.frames) * np.uint8(DISPOSABLE)
        stbl.append(_full_box(b"sdtp", 0, 0, dependency))
    if any(p.composition is not None for p in parts):
        counts, values = [], []
        for p in parts:
            if p.composition is None:
                counts.append(np.asarray([p.frames], np.int64))
                values.append(np.zeros(1, np.int64))
            else:
                c, v = _run_lengths(p.composition)
                counts.append(c)
                values.append(v.astype(np.int64))
        counts, values = _merged_runs(np.concatenate(counts), np.concatenate(values))
        stbl.append(_full_box(b"ctts", 0, 0, struct.pack(">I", len(counts)), _pairs(counts, values)))

    run_samples = np.fromiter((samples for p in parts for _, _, samples in p.byte_runs), np.int64)
    counts, per_chunk = _run_lengths(run_samples)
    first_chunks = np.concatenate([[0], np.cumsum(counts)[:-1]]) + 1
    stsc_rows = np.empty((len(counts), 3), ">u4")
    stsc_rows[:, 0], stsc_rows[:, 1], stsc_rows[:, 2] = first_chunks, per_chunk, 1
    stbl.append(_full_box(b"stsc", 0, 0, struct.pack(">I", len(counts)), stsc_rows))
    sizes = np.concatenate([p.sizes for p in parts], dtype=">u4")
    if sizes.min() == sizes.max():  # one size for all: no table
        stbl.append(_full_box(b"stsz", 0, 0, struct.pack(">II", int(sizes[0]), n)))
    else:
        stbl.append(_full_box(b"stsz", 0, 0, struct.pack(">II", 0, n), sizes))

    def co64(data_start: int) -> list:
        chunk_offsets = np.empty(len(run_lengths), ">u8")
        chunk_offsets[0] = data_start
        chunk_offsets[1:] = data_start + np.cumsum(run_lengths[:-1])
        return _full_box(b"co64", 0, 0, struct.pack(">I", len(chunk_offsets)), chunk_offsets)

    def moov(chunk_offsets: list) -> list:
        minf = _box(b"minf", _full_box(b"vmhd", 0, 1, bytes(8)),
                    _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1))),
                    _box(b"stbl", *stbl, chunk_offsets))
        mdhd_version = 1 if media_duration >= INT32_MAX else 0
        mdhd = _full_box(b"mdhd", mdhd_version, 0,
                         struct.pack(">QQIQ" if mdhd_version else ">IIII", 0, 0, timescale, media_duration),
                         struct.pack(">HH", header.language, 0))
        hdlr = _full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"VideoHandler\0")
        head_version = 1 if track_length >= INT32_MAX else 0
        times = struct.pack(">QQ" if head_version else ">II", 0, 0)
        tkhd = _full_box(b"tkhd", head_version, 3, times,
                         struct.pack(">II", 1, 0), struct.pack(">Q" if head_version else ">I", track_length),
                         bytes(8), struct.pack(">hhhH", 0, 0, 0, 0), header.tkhd_matrix,
                         struct.pack(">II", header.tkhd_width, header.tkhd_height))
        trak = _box(b"trak", tkhd, _box(b"edts", elst), _box(b"mdia", mdhd, hdlr, minf))
        mvhd = _full_box(b"mvhd", head_version, 0, times,
                         struct.pack(">I", MOVIE_TIMESCALE), struct.pack(">Q" if head_version else ">I", track_length),
                         struct.pack(">IH", 0x10000, 0x100), bytes(10),
                         struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000), bytes(24),
                         struct.pack(">I", 2))
        return _box(b"moov", mvhd, trak)

    # Index first (faststart), as LeRobot's files and the PyAV remux are laid out: readers over
    # HTTP can seek without fetching the whole file. Every table is known before a byte is
    # copied, so this costs nothing; co64 entries have a fixed width, so the moov's size does
    # not depend on the offsets it holds.
    ftyp = header.ftyp or b"".join(_box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2mp41"))
    mdat_header = 16  # 64-bit size: files over 4 GiB work
    data_start = len(ftyp) + _length(moov(co64(0))) + mdat_header
    head = [ftyp, *moov(co64(data_start)), struct.pack(">I4sQ", 1, b"mdat", mdat_header + payload)]
    return ConcatPlan(parts=parts, begins=begins, head=head, frames=n, size=data_start + payload)


def _with_bit_rates(first: Part, payload: int, track_duration: int) -> bytes:
    """The first file's stsd with its btrt box (if any) describing the joined file, as FFmpeg's
    muxer fills it: average = bits / duration, maximum = the larger of that and the bit rate of
    the stream it copies (the first file's as its demuxer reports it, computed from the file's
    bytes and duration: the source's btrt is not read); no decoder buffer size. The duration is
    positive: every sample lasts some ticks."""
    at, stsd = first.header.btrt_at, first.header.description
    if at < 0:
        return stsd
    avg = (payload * 8 * first.header.timescale // track_duration) & 0xFFFFFFFF
    return stsd[:at] + struct.pack(">III", 0, max(first.bit_rate, avg), avg) + stsd[at + 12:]


class SourceChanged(Mp4Error):
    """A source file differs from when its headers were read (size or modification time)."""

    def __init__(self, path: Path, fault: str):
        self.path = path
        super().__init__(fault)


def write_concatenation(path: Path | str, plan: ConcatPlan, check_cancel=None) -> None:
    """Write ``plan`` to ``path`` (created): the head, then each part's sample bytes, copied by
    the kernel where it can (``os.copy_file_range``), else through a bounded buffer.

    ``check_cancel()`` is called between copy calls and may raise to stop.
    """
    with open(path, "wb") as out:
        for piece in plan.head:
            out.write(piece)
        out.flush()
        dst = out.fileno()
        kernel = hasattr(os, "copy_file_range")
        for part in plan.parts:
            src = os.open(part.path, os.O_RDONLY)  # no file object: its buffer would not be used
            try:
                st = os.fstat(src)
                if st.st_size != part.size or st.st_mtime_ns != part.mtime_ns:
                    raise SourceChanged(part.path, f"changed since it was checked: {part.size} -> "
                                                   f"{st.st_size} bytes, modification time "
                                                   f"{part.mtime_ns} -> {st.st_mtime_ns} ns")
                for offset, length, _ in part.byte_runs:
                    kernel = _copy_run(src, dst, offset, length, kernel, check_cancel, part.path)
            finally:
                os.close(src)
        written = os.fstat(dst).st_size
        if written != plan.size:
            raise OSError(f"{path}: wrote {written} bytes, {plan.size} planned")


def _copy_run(src: int, dst: int, offset: int, length: int, kernel: bool, check_cancel, name: Path) -> bool:
    """Copy ``length`` bytes at ``offset`` of ``src`` to the end of ``dst``; returns whether the
    kernel copy still works (it is given up for good after the first refusal)."""
    while length > 0:
        if check_cancel is not None:
            check_cancel()
        block = min(length, COPY_BLOCK)
        copied = 0
        if kernel:
            try:
                copied = os.copy_file_range(src, dst, block, offset)
            except OSError:  # other file system on old kernels, or a file system without it
                kernel = False
        if not kernel:
            copied = 0
            while copied < block:
                chunk = memoryview(os.pread(src, min(FALLBACK_BUFFER, block - copied), offset + copied))
                if not chunk:
                    break
                copied += len(chunk)
                while chunk:
                    chunk = chunk[os.write(dst, chunk):]
        if copied <= 0:
            raise SourceChanged(name, f"ended {length} bytes early while its samples were copied: it changed "
                                      "since it was checked")
        offset += copied
        length -= copied
    return kernel
