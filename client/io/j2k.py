"""JPEG 2000 slices decoded only where a crop needs them, on several threads.

pydicom's JPEG 2000 plugins decode whole frames and hold the GIL: 56 slices of a 5 cm lesion's
crop took about 0.9 s on two cores. The native module ``dmfn.client.io._j2k_region``
(``client/native/j2k_region.cpp``, OpenJPEG's ``opj_set_decode_area``) decodes only the rows and
columns sent, without the GIL, one thread per core. It is built where Debian's
``libopenjp2-7-dev`` is installed (``make setup`` installs it); without it, and for any frame
whose codestream does not match its header, the slice is decoded by pydicom as before (the
same values: ``tests/test_dicom_header.py`` compares both).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from dmfn.client.io.dicom_header import SliceHeader

try:
    from dmfn.client.io import _j2k_region
except ImportError:  # built without libopenjp2: pydicom's plugins decode JPEG 2000
    _j2k_region = None

#: JPEG 2000 transfer syntaxes (lossless only, and lossless or lossy) of the region decoder.
J2K_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
_ITEM, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE0DD


def available() -> bool:
    """Whether the native region decoder was built (libopenjp2 was found)."""
    return _j2k_region is not None


def decodable(header: SliceHeader) -> bool:
    """Whether ``header``'s slice can be region-decoded: a single-frame grey JPEG 2000 slice of
    8 or 16 allocated bits whose encapsulated pixel data's place is known, no modality LUT."""
    return (
        _j2k_region is not None
        and header.transfer_syntax in J2K_SYNTAXES
        and header.pixel_offset is not None
        and header.get("SamplesPerPixel") == 1
        and int(header.get("NumberOfFrames", 1) or 1) == 1
        and header.get("BitsAllocated") in (8, 16)
        and 1 <= (header.get("BitsStored") or 0) <= header.get("BitsAllocated")
        and header.get("PixelRepresentation") in (0, 1)
        and "ModalityLUTSequence" not in header
    )


def read_regions(
    headers: Sequence[SliceHeader], rows: slice, columns: slice, threads: int
) -> list[np.ndarray | None]:
    """Stored values (the dtype pydicom's ``pixel_array`` has) of ``rows`` x ``columns`` of each
    :func:`decodable` slice; None for a slice whose codestream's precision or signedness differs
    from its header (pydicom corrects those; the caller decodes it through pydicom). A frame
    that cannot be decoded raises ValueError naming its file."""
    if _j2k_region is None or not headers:
        return [None] * len(headers)
    first = headers[0]
    frames = [_frame(h) for h in headers]
    decoded, precision, errors = _j2k_region.decode_regions(
        frames, int(first["Rows"]), int(first["Columns"]), rows.start, rows.stop,
        columns.start, columns.stop, threads,
    )  # fmt: skip
    for header, error in zip(headers, errors, strict=True):
        if error:
            raise ValueError(
                f"file {header.path}: JPEG 2000 pixel data cannot be decoded ({error})"
            )
    out: list[np.ndarray | None] = []
    for header, values, (bits, signed) in zip(headers, decoded, precision, strict=True):
        pixel_signed = header["PixelRepresentation"] == 1
        if bits != header.get("BitsStored") or signed != pixel_signed:
            out.append(None)
            continue
        kind = "i" if pixel_signed else "u"
        out.append(values.astype(f"{kind}{header['BitsAllocated'] // 8}"))
    return out


def _frame(header: SliceHeader) -> bytes:
    """The one frame of an encapsulated single-frame slice: its fragments after the basic offset
    table, joined (PS3.5 A.4). ValueError naming the file when the items are damaged."""
    try:
        with open(header.path, "rb") as handle:
            handle.seek(int(header.pixel_offset or 0))
            data = handle.read()
    except OSError as err:
        raise ValueError(f"file {header.path}: cannot be read ({err.strerror or err})") from None
    fragments: list[bytes] = []
    position, first = 0, True
    while position + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, position)
        tag = (group << 16) | element
        position += 8
        if tag == _SEQUENCE_END:
            break
        if tag != _ITEM or position + length > len(data):
            raise ValueError(f"file {header.path}: damaged encapsulated pixel data")
        if not first:  # the first item is the basic offset table
            fragments.append(data[position : position + length])
        first = False
        position += length
    if not fragments:
        raise ValueError(f"file {header.path}: encapsulated pixel data holds no fragment")
    return fragments[0] if len(fragments) == 1 else b"".join(fragments)
