"""Image files read within their declared size, so a hostile or truncated file fails at once, in
constant memory, with one line naming the file and the header field.

Before any array is allocated or any voxel decoded, the size a header declares is checked against
:data:`~dmfn.contract.limits.MAX_IMAGE_VOXELS` and against the bytes the file holds: the file's
size for uncompressed data, a gzip stream's recorded (or, failing that, counted) length for
``.nii.gz``. NRRD data is read here (pynrrd parses the header and ASCII data only): raw data
exactly as declared, gzip and bzip2 data inflated no further than the declared size, so a small
file that inflates to gigabytes stops there.
"""

from __future__ import annotations

import bz2
import gzip
import io
import math
import stat
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import nrrd
import numpy as np

from dmfn.client.io.errors import one_line
from dmfn.contract.limits import MAX_IMAGE_VOXELS

#: Bytes read or inflated at a time.
CHUNK_BYTES = 1 << 20
#: Longest NRRD header read, bytes (a 3D Slicer segmentation with a thousand segments: ~1 MB).
MAX_NRRD_HEADER_BYTES = 8 << 20
#: Most bytes of text per value of an ASCII NRRD ("-1.2345678901234567e+308 " is 25), plus slack.
ASCII_BYTES_PER_VALUE = 64
#: The NRRD ``type`` names (NRRD file format, version 5) of each numpy type code.
_NRRD_TYPE_NAMES = {
    "i1": "signed char, int8, int8_t",
    "u1": "uchar, unsigned char, uint8, uint8_t",
    "i2": "short, short int, signed short, signed short int, int16, int16_t",
    "u2": "ushort, unsigned short, unsigned short int, uint16, uint16_t",
    "i4": "int, signed int, int32, int32_t",
    "u4": "uint, unsigned int, uint32, uint32_t",
    "i8": "longlong, long long, long long int, signed long long, signed long long int, int64, "
    "int64_t",
    "u8": "ulonglong, unsigned long long, unsigned long long int, uint64, uint64_t",
    "f4": "float",
    "f8": "double",
}
#: numpy type code of each NRRD ``type`` name.
NRRD_TYPES: dict[str, str] = {
    name.strip(): code for code, names in _NRRD_TYPE_NAMES.items() for name in names.split(",")
}
_GZIP = ("gzip", "gz")
_BZIP2 = ("bzip2", "bz2")
_ASCII = ("ascii", "text", "txt")


def check_voxels(
    where: str,
    field: str,
    dims: Sequence[int],
    limit: int = MAX_IMAGE_VOXELS,
    error: type[ValueError] = ValueError,
) -> int:
    """The number of voxels (values) of ``dims``, which the header ``field`` of ``where`` declares.

    Raises:
        ValueError: (or ``error``) ``"<where>: <field> = 512 x 512 x 9000 = ... voxels, above
            the limit of ... voxels per image"`` when a size is below 1 or the product is above
            ``limit``. Python integers: no product overflows.
    """
    sizes = [int(d) for d in dims]
    shown = " x ".join(str(d) for d in sizes)
    if not sizes or min(sizes) < 1:
        raise error(f"{where}: {field} = {shown or '()'}: every size must be at least 1")
    n = math.prod(sizes)
    if n > limit:
        raise error(
            f"{where}: {field} = {shown} = {n:,} voxels, above the limit of {limit:,} voxels "
            "per image"
        )
    return n


def _truncated(where: str, declared: str, need: int, have: int) -> ValueError:
    return ValueError(
        f"{where}: truncated: {declared} needs {need:,} bytes of data, the file holds {have:,}"
    )


# --------------------------------------------------------------------------- NIfTI
def check_nifti(path: Path, header: Any, data_offset: int | None = None) -> None:
    """Refuse the NIfTI file at ``path`` (its parsed ``header``) before its data is read: ``dim``
    above the image limit, a datatype that is not a number, or less data than ``dim`` and the
    datatype need (``.nii``: the file's size; ``.nii.gz``: the length its gzip trailer records,
    else counted by inflating, in constant memory, no further than needed). ``data_offset``:
    where the data starts (nibabel's proxy knows it where the header's vox_offset says 0);
    None: the header's vox_offset."""
    where = f"NIfTI file {path}"
    shape = tuple(int(d) for d in header.get_data_shape())
    n = check_voxels(where, "dim", shape)
    dtype = np.dtype(header.get_data_dtype())
    if dtype.kind not in "iuf":
        raise ValueError(f"{where}: datatype {dtype} is not an integer or floating-point type")
    offset = int(header.get_data_offset()) if data_offset is None else data_offset
    need = offset + n * dtype.itemsize
    try:
        if path.name.lower().endswith(".gz"):
            have = _gzip_length(path, need, where)
        else:
            have = path.stat().st_size
    except OSError as err:
        raise ValueError(f"{where}: cannot be read ({one_line(err)})") from None
    if have < need:
        declared = f"dim = {' x '.join(map(str, shape))} of {dtype} after vox_offset {offset}"
        raise _truncated(where, declared, need, have)


def _gzip_length(path: Path, need: int, where: str) -> int:
    """Bytes the gzip file holds, up to ``need``: the trailer's ISIZE when it agrees, else
    counted by inflating (several members, or a damaged or truncated stream)."""
    size = path.stat().st_size
    if size >= 4:
        with path.open("rb") as handle:
            handle.seek(size - 4)
            if int.from_bytes(handle.read(4), "little") == need % 2**32:
                return need
    have = 0
    try:
        with gzip.open(path, "rb") as stream:
            while have < need:
                chunk = stream.read(min(CHUNK_BYTES, need - have))
                if not chunk:
                    break
                have += len(chunk)
    except EOFError:  # the stream ends early: truncated
        pass
    except (OSError, zlib.error) as err:
        raise ValueError(f"{where}: cannot be read (damaged gzip data: {one_line(err)})") from None
    return have


# --------------------------------------------------------------------------- NRRD
def read_nrrd_header(path: Path) -> tuple[dict, int]:
    """The parsed header of the NRRD file at ``path`` (pynrrd's fields) and where its data
    starts (bytes); at most :data:`MAX_NRRD_HEADER_BYTES` are read. ValueError naming the file."""
    where = f"NRRD file {path}"
    lines: list[bytes] = []
    start = 0
    try:
        with path.open("rb") as handle:
            while start <= MAX_NRRD_HEADER_BYTES:
                line = handle.readline(MAX_NRRD_HEADER_BYTES + 1 - start)
                lines.append(line)
                start += len(line)
                if not line or (len(lines) > 1 and not line.strip()):
                    break
    except OSError as err:
        raise ValueError(f"{where}: cannot be read ({one_line(err)})") from None
    if start > MAX_NRRD_HEADER_BYTES:
        raise ValueError(f"{where}: no end of header in the first {MAX_NRRD_HEADER_BYTES:,} bytes")
    try:
        header = nrrd.read_header(lines)
    except Exception as err:  # pynrrd raises NRRDError, ValueError, KeyError ...
        raise ValueError(f"{where}: cannot be read ({one_line(err)})") from err
    return dict(header), start


def nrrd_dtype(path: Path, header: dict) -> np.dtype:
    """numpy dtype of the NRRD ``type`` and ``endian`` fields; ValueError naming the field."""
    name = str(header.get("type", ""))
    if name not in NRRD_TYPES:
        raise ValueError(f"NRRD file {path}: field 'type' = {name!r} is not a number type")
    dtype = np.dtype(NRRD_TYPES[name])
    if dtype.itemsize == 1 or str(header.get("encoding")).lower() in _ASCII:
        return dtype
    endian = header.get("endian")
    if endian not in ("little", "big"):
        raise ValueError(f"NRRD file {path}: field 'endian' must be little or big, got {endian!r}")
    return dtype.newbyteorder("<" if endian == "little" else ">")


def read_nrrd_data(path: Path, header: dict, start: int) -> np.ndarray:
    """The data of the NRRD file at ``path`` (``header`` and ``start`` from
    :func:`read_nrrd_header`) as pynrrd's ``index_order="F"`` gives it: axes in ``sizes`` order.

    ``sizes`` is checked against the image limit first; raw data must hold exactly the declared
    bytes, compressed data must inflate to exactly them (it is inflated no further than one byte
    past them). ValueError naming the file and the field."""
    where = f"NRRD file {path}"
    sizes = [int(s) for s in np.atleast_1d(header.get("sizes", ()))]
    if header.get("dimension") != len(sizes):
        raise ValueError(
            f"{where}: field 'dimension' = {header.get('dimension')} but 'sizes' has {len(sizes)}"
        )
    n = check_voxels(where, "sizes", sizes)
    dtype = nrrd_dtype(path, header)
    need = n * dtype.itemsize
    encoding = str(header.get("encoding", "")).lower()
    if encoding not in ("raw", *_GZIP, *_BZIP2, *_ASCII):
        raise ValueError(f"{where}: field 'encoding' = {encoding!r} is not supported")
    source, offset = _data_source(path, header, start)
    size = source.stat().st_size
    line_skip = int(header.get("line skip", header.get("lineskip", 0)))
    byte_skip = int(header.get("byte skip", header.get("byteskip", 0)))
    if line_skip < 0 or byte_skip < -1:
        raise ValueError(f"{where}: fields 'line skip' and 'byte skip' must be >= 0 (or -1)")
    declared = f"sizes = {' x '.join(map(str, sizes))} of {dtype.name}"
    if encoding in _ASCII:
        if size - offset > ASCII_BYTES_PER_VALUE * n + CHUNK_BYTES:
            raise ValueError(
                f"{where}: {size - offset:,} bytes of text for {declared}: more data than declared"
            )
        try:
            with path.open("rb") as handle:
                handle.seek(start)
                return np.asarray(nrrd.read_data(header, handle, str(path), index_order="F"))
        except Exception as err:  # pynrrd raises NRRDError, ValueError, OSError ...
            raise ValueError(f"{where}: cannot be read ({one_line(err)})") from err
    if byte_skip == -1 and encoding != "raw":
        raise ValueError(f"{where}: field 'byte skip' = -1 with {encoding} data is not supported")
    try:
        with source.open("rb") as handle:
            handle.seek(offset)
            for _ in range(line_skip):
                handle.readline()
            if encoding == "raw":
                buffer = _read_raw(handle, size, byte_skip, need, dtype.itemsize, where, declared)
            else:
                buffer = _read_inflated(handle, encoding, byte_skip, need, where, declared)
    except OSError as err:
        raise ValueError(f"{where}: cannot be read ({one_line(err)})") from None
    return buffer.view(dtype).reshape(sizes[::-1]).T


def _data_source(path: Path, header: dict, start: int) -> tuple[Path, int]:
    """The file holding the data and the data's offset in it: this file, or a regular file named
    by ``data file`` (relative to this file's folder) for a detached header (.nhdr)."""
    name = header.get("data file", header.get("datafile"))
    if name is None:
        return path, start
    source = Path(str(name))
    source = source if source.is_absolute() else path.parent / source
    try:
        regular = stat.S_ISREG(source.stat().st_mode)
    except OSError as err:
        raise ValueError(f"NRRD file {path}: field 'data file': {source}: {err.strerror}") from None
    if not regular:
        raise ValueError(f"NRRD file {path}: field 'data file': {source} is not a regular file")
    return source, 0


def _read_raw(
    handle: io.BufferedIOBase,
    size: int,
    byte_skip: int,
    need: int,
    itemsize: int,
    where: str,
    declared: str,
) -> np.ndarray:
    """Exactly ``need`` bytes after ``byte_skip`` (-1: the last ``need`` bytes of the file); as
    pynrrd, a file holding more whole values than declared is refused."""
    here = handle.tell()
    if byte_skip == -1:
        if size - here < need:
            raise _truncated(where, declared, need, size - here)
        handle.seek(size - need)
    else:
        have = size - here - byte_skip
        if have < need:
            raise _truncated(where, declared, need, max(have, 0))
        if have - need >= itemsize:
            raise ValueError(
                f"{where}: {have:,} bytes of data for {declared}, which needs {need:,}: more data "
                "than declared"
            )
        handle.seek(here + byte_skip)
    buffer = np.empty(need, np.uint8)
    view = buffer.data  # a writable memoryview of the buffer
    got = 0
    while got < need:
        n = handle.readinto(view[got : got + CHUNK_BYTES])
        if not n:
            raise _truncated(where, declared, need, got)
        got += n
    return buffer


def _inflated(handle: IO[bytes], encoding: str) -> Iterator[bytes]:
    """Inflated chunks (at most :data:`CHUNK_BYTES` each) of the gzip or bzip2 stream at
    ``handle``: the caller stops when it has enough, so a stream is inflated no further."""
    if encoding in _GZIP:
        inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)
        while not inflate.eof:
            data = inflate.unconsumed_tail or handle.read(CHUNK_BYTES)
            out = inflate.decompress(data, CHUNK_BYTES)
            if out:
                yield out
            elif not data:
                return  # the file ends inside the stream
        return
    unpack = bz2.BZ2Decompressor()
    while not unpack.eof:
        data = handle.read(CHUNK_BYTES) if unpack.needs_input else b""
        if unpack.needs_input and not data:
            return
        out = unpack.decompress(data, CHUNK_BYTES)
        if out:
            yield out


def _read_inflated(
    handle: IO[bytes], encoding: str, byte_skip: int, need: int, where: str, declared: str
) -> np.ndarray:
    """Exactly ``need`` bytes after the first ``byte_skip`` of the inflated stream. The buffer's
    pages are touched only as data arrives, so a truncated stream costs what it holds."""
    buffer = np.empty(need, np.uint8)
    got = -byte_skip
    try:
        for chunk in _inflated(handle, encoding):
            begin = max(0, -got)
            if got + len(chunk) > need:
                raise ValueError(
                    f"{where}: the {encoding} data inflates to more than the {need:,} bytes "
                    f"of {declared}"
                )
            if begin < len(chunk):
                buffer[max(got, 0) : got + len(chunk)] = np.frombuffer(chunk, np.uint8)[begin:]
            got += len(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"{where}: cannot be read (damaged {encoding} data: {one_line(err)})"
        ) from None
    if got < need:
        raise _truncated(where, declared, need, max(got, 0))
    return buffer
