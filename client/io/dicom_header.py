"""The header values a CT series is chosen, sorted and checked by, read fast from each file.

pydicom turns every element of a file into Python objects; reading a 300-slice series that way
and checking it through pydicom's attribute access took 0.58 s of a 0.94 s partial read (issue
25). :func:`scan_header` instead walks the elements of a file's first bytes, keeps the values of
the few tags in :data:`TAGS`, and notes where native pixel data starts, so that a slice's pixels
can later be read from that offset without parsing the file again.

It reads what CT scanners and PACS write: a Part 10 file (preamble, "DICM", file meta) whose
data set is explicit or implicit VR little endian, its text values ASCII. Anything else (no
preamble, big endian, deflated, a header longer than :data:`HEAD_BYTES`, a value it cannot
convert, non-ASCII text) gives None, and the caller reads that file with pydicom and
:meth:`SliceHeader.from_dataset`, which gives the same record (tests/test_dicom_header.py
compares both on every kind of file the tests write).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import UID

#: Bytes read from the start of a file to find its header values (CT headers are 2-20 KB).
HEAD_BYTES = 1 << 16
#: Little-endian transfer syntaxes whose data set this reader walks: implicit, explicit VR, and
#: the encapsulated (compressed) ones, whose data set is explicit VR little endian too.
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
#: Syntaxes whose pixel data is stored as plain little-endian values (:attr:`pixel_offset`).
#: The other syntaxes walked are the encapsulated ones; big endian and deflated are not.
NATIVE_SYNTAXES = (IMPLICIT_LITTLE, EXPLICIT_LITTLE)

#: (tag, VR, keyword) of every value kept, in tag order; the VR is used for implicit VR files.
TAGS: tuple[tuple[int, str, str], ...] = (
    (0x00080005, "CS", "SpecificCharacterSet"),
    (0x00080016, "UI", "SOPClassUID"),
    (0x00080018, "UI", "SOPInstanceUID"),
    (0x00080060, "CS", "Modality"),
    (0x0008103E, "LO", "SeriesDescription"),
    (0x00100020, "LO", "PatientID"),
    (0x00180050, "DS", "SliceThickness"),
    (0x0020000D, "UI", "StudyInstanceUID"),
    (0x0020000E, "UI", "SeriesInstanceUID"),
    (0x00200032, "DS", "ImagePositionPatient"),
    (0x00200037, "DS", "ImageOrientationPatient"),
    (0x00200052, "UI", "FrameOfReferenceUID"),
    (0x00280002, "US", "SamplesPerPixel"),
    (0x00280008, "IS", "NumberOfFrames"),
    (0x00280010, "US", "Rows"),
    (0x00280011, "US", "Columns"),
    (0x00280030, "DS", "PixelSpacing"),
    (0x00280100, "US", "BitsAllocated"),
    (0x00280101, "US", "BitsStored"),
    (0x00280103, "US", "PixelRepresentation"),
    (0x00281052, "DS", "RescaleIntercept"),
    (0x00281053, "DS", "RescaleSlope"),
    (0x00283000, "SQ", "ModalityLUTSequence"),
)
_BY_TAG = {tag: (vr, keyword) for tag, vr, keyword in TAGS}
PIXEL_DATA = 0x7FE00010
#: Explicit VRs whose length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UR UT UN SV UV".split())
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_TEXT_ASCII = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6"})


class _Unsupported(Exception):
    """The fast reader cannot read this file; pydicom will."""


@dataclass(frozen=True)
class Invalid:
    """A value that is present but unusable (e.g. PixelSpacing ``1,5\\1,5``, an empty
    RescaleSlope): the record keeps the file readable, and using the value raises ValueError
    naming the file and the keyword."""

    text: str


#: Numeric values whose emptiness is an error, not an absence: pydicom would apply them.
_EMPTY_IS_INVALID = frozenset({"RescaleSlope", "RescaleIntercept"})
#: Text VRs: an empty value is kept as "" (present), as pydicom keeps it.
_TEXT_VRS = frozenset({"CS", "LO", "UI"})


@dataclass(frozen=True)
class SliceHeader:
    """One file's header values (pydicom keywords; None when absent) and its pixel data's place.

    ``values`` maps keyword -> value: ``str`` for CS/LO/UI, ``int`` for US/IS, ``float`` for a
    single DS, ``tuple[float, ...]`` for a multi-valued DS, ``True`` for a sequence's presence.
    ``transfer_syntax``: the file meta's TransferSyntaxUID ("" when absent);
    ``media_sop_class``: its MediaStorageSOPClassUID; ``has_pixel_data``: whether a (7FE0,0010)
    element exists (None: unknown, a header pydicom read without its pixel data);
    ``pixel_offset``: file offset (bytes) of the pixel data's value (native values, or the first
    item of encapsulated data), None when unknown (a header pydicom read); ``pixel_length``:
    its length for native pixel data, else None.
    """

    path: Path
    values: dict[str, Any]
    transfer_syntax: str
    media_sop_class: str
    has_pixel_data: bool | None
    pixel_offset: int | None = None
    pixel_length: int | None = None

    def __contains__(self, keyword: str) -> bool:
        return self.values.get(keyword) is not None

    def __getitem__(self, keyword: str) -> Any:
        value = self.values.get(keyword)
        if value is None:
            raise KeyError(keyword)
        return self._usable(keyword, value)

    def get(self, keyword: str, default: Any = None) -> Any:
        value = self.values.get(keyword)
        return default if value is None else self._usable(keyword, value)

    def _usable(self, keyword: str, value: Any) -> Any:
        if isinstance(value, Invalid):
            raise ValueError(f"file {self.path}: {keyword} holds an unusable value {value.text!r}")
        return value

    @property
    def sop_class(self) -> str | None:
        """SOPClassUID, else the file meta's MediaStorageSOPClassUID, else None."""
        return self.get("SOPClassUID") or self.media_sop_class or None

    @classmethod
    def from_dataset(cls, path: Path, ds: pydicom.Dataset) -> SliceHeader:
        """The record of a header pydicom read (``has_pixel_data`` None when it was read
        without its pixel data, which pydicom's ``stop_before_pixels`` cannot tell apart)."""
        values: dict[str, Any] = {}
        for _, vr, keyword in TAGS:
            if keyword not in ds:
                continue
            value = ds[keyword].value
            if vr == "SQ":
                values[keyword] = True
            elif value is None or value == "":
                empty = _empty(vr, keyword)
                if empty is not None:
                    values[keyword] = empty
            else:
                try:
                    values[keyword] = _from_pydicom(vr, value)
                except (ValueError, TypeError):
                    values[keyword] = Invalid(str(value))
        meta = getattr(ds, "file_meta", None)
        syntax = getattr(meta, "TransferSyntaxUID", None)
        return cls(
            path=path,
            values=values,
            transfer_syntax=str(syntax or ""),
            media_sop_class=str(getattr(meta, "MediaStorageSOPClassUID", "") or ""),
            has_pixel_data=True if "PixelData" in ds else None,
        )


def _empty(vr: str, keyword: str) -> Any:
    """What an element present with an empty value records (None: nothing, as if absent)."""
    if keyword in _EMPTY_IS_INVALID:
        return Invalid("")
    return "" if vr in _TEXT_VRS else None


def _from_pydicom(vr: str, value: Any) -> Any:
    if vr == "DS":
        if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
            return float(value)
        floats = tuple(float(v) for v in value)
        return floats[0] if len(floats) == 1 else floats
    if vr in ("US", "IS"):
        return int(value)
    return str(value)


def scan_header(path: Path) -> SliceHeader | None:
    """The :class:`SliceHeader` of the Part 10 file ``path`` read without pydicom, or None
    when the file is not one this reader walks (see the module docstring). OSError propagates."""
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    try:
        return _walk(path, head)
    except (_Unsupported, struct.error, UnicodeDecodeError, ValueError, RecursionError):
        return None  # RecursionError: sequences nested beyond Python's stack; pydicom decides


def _walk(path: Path, head: bytes) -> SliceHeader:
    meta, position = _file_meta(head)
    syntax = meta.get(0x00020010, "")
    if syntax not in NATIVE_SYNTAXES and not UID(syntax).is_encapsulated:
        raise _Unsupported(syntax)  # big endian, deflated, or not a transfer syntax
    walker = _Walker(head, implicit=syntax == IMPLICIT_LITTLE)
    values: dict[str, Any] = {}
    offset = length = None
    has_pixels = False
    while True:
        if position >= len(head):
            if position > len(head) or (
                len(head) == HEAD_BYTES and path.stat().st_size > len(head)
            ):
                raise _Unsupported("a length past the bytes read, or a header over HEAD_BYTES")
            break  # the file ends without pixel data
        tag, vr, size, position = walker.element(position)
        if tag >= PIXEL_DATA:
            has_pixels = tag == PIXEL_DATA
            if has_pixels:
                offset = position
                if size != _UNDEFINED and syntax in NATIVE_SYNTAXES:
                    length = size
            break
        if size == _UNDEFINED:
            position = walker.skip_undefined(position)
            if tag in _BY_TAG:
                values[_BY_TAG[tag][1]] = True
            continue
        if tag in _BY_TAG:
            if position + size > len(head):
                raise _Unsupported("value beyond the bytes read")
            known_vr, keyword = _BY_TAG[tag]
            if not walker.implicit and vr != known_vr.encode():
                raise _Unsupported("a VR other than the dictionary's (e.g. UN)")
            value = _convert(known_vr, head[position : position + size])
            if value is None:
                value = _empty(known_vr, keyword)
            if value is not None:
                values[keyword] = value
        position += size
    if values.get("SpecificCharacterSet", "") not in _TEXT_ASCII:
        raise _Unsupported("character set")
    return SliceHeader(
        path=path,
        values=values,
        transfer_syntax=syntax,
        media_sop_class=meta.get(0x00020002, ""),
        has_pixel_data=has_pixels,
        pixel_offset=offset,
        pixel_length=length,
    )


def _file_meta(head: bytes) -> tuple[dict[int, str], int]:
    """The file meta group's UI values by tag, and the offset of the data set after it (the
    group is explicit VR little endian whatever the data set's syntax)."""
    walker = _Walker(head, implicit=False)
    position = 132
    meta: dict[int, str] = {}
    while position + 8 <= len(head):
        if struct.unpack_from("<H", head, position)[0] != 0x0002:
            return meta, position  # the data set, maybe implicit VR: not read as explicit here
        tag, vr, length, value = walker.element(position)
        if vr == b"UI":
            meta[tag] = _text(head[value : value + length])
        position = value + length
    raise _Unsupported("file meta runs past the bytes read")


class _Walker:
    """Reads element headers (tag, VR, length) of a little-endian data set in ``head``."""

    def __init__(self, head: bytes, *, implicit: bool) -> None:
        self.head = head
        self.implicit = implicit

    def element(self, position: int) -> tuple[int, bytes, int, int]:
        """(tag, VR (b"" when implicit), value length, offset of the value) at ``position``."""
        group, element, rest = struct.unpack_from("<HHI", self.head, position)
        tag = (group << 16) | element
        if self.implicit or group == 0xFFFE:
            return tag, b"", rest, position + 8
        vr = self.head[position + 4 : position + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", self.head, position + 8)
            if vr == b"UN" and length == _UNDEFINED:
                raise _Unsupported("UN of undefined length")
            return tag, vr, length, position + 12
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise _Unsupported("not an explicit VR")
        return tag, vr, rest >> 16, position + 8

    def skip_undefined(self, position: int) -> int:
        """The offset after a sequence of undefined length whose items start at ``position``."""
        while True:
            tag, _, length, position = self.element(position)
            if tag == _SEQUENCE_END:
                return position
            if tag != _ITEM:
                raise _Unsupported("not an item")
            if length != _UNDEFINED:
                position += length
                continue
            while True:  # an item of undefined length: its elements up to the item's end
                tag, _, length, position = self.element(position)
                if tag == _ITEM_END:
                    break
                position = (
                    self.skip_undefined(position) if length == _UNDEFINED else position + length
                )
            if position > len(self.head):
                raise _Unsupported("sequence runs past the bytes read")


def _text(raw: bytes) -> str:
    return raw.decode("ascii").rstrip("\x00 ")


def _convert(vr: bytes | str, raw: bytes) -> Any:
    """The value of one element as :meth:`SliceHeader.from_dataset` gives it; None when empty."""
    vr = vr.decode("ascii") if isinstance(vr, bytes) else vr
    if vr == "SQ":
        return True
    if vr == "US":
        if len(raw) != 2:
            raise _Unsupported("US with VM != 1")
        return struct.unpack("<H", raw)[0]
    text = _text(raw)
    if "\\" in text and vr not in ("DS",):
        raise _Unsupported("multi-valued text")
    if vr in ("CS", "UI", "IS"):
        text = text.strip()
    if text == "":
        return None
    if vr == "IS":
        return int(text)
    if vr == "DS":
        floats = tuple(float(v) for v in text.split("\\"))
        return floats[0] if len(floats) == 1 else floats
    return text
