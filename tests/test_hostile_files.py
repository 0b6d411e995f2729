"""Hostile image files (issue 19, defect 10): each is small on disk but declares a huge image, is
truncated, inflates far beyond what it declares, or is a folder that cannot be read.

The readers must refuse each from its header, before they allocate anything, with one line that
names the file and the header field; ``dmfn predict`` (run in a child process, its peak memory
measured) must print that one line, no traceback, and exit with status 2, in far less memory
than the file declares (:data:`PEAK_RSS_LIMIT_MB`).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest

from dmfn.client import predict as P
from dmfn.client.io import (
    DicomError,
    load_image,
    load_mask,
    write_dicom_series,
    write_nifti_mask,
    write_nifti_volume,
)
from dmfn.client.io.bounded import read_nrrd_data, read_nrrd_header
from dmfn.contract.limits import MAX_IMAGE_VOXELS

#: Peak resident memory (MB) a refused file may cost the child process; Python with numpy,
#: pydicom and nibabel takes about 60 MB, the hostile files declare (or inflate to) 0.25 to
#: 70,000 GB.
PEAK_RSS_LIMIT_MB = 300
#: Data (bytes, RLIMIT_DATA: heap and private mappings) the child may allocate: a regression
#: fails fast instead of taking the host's memory.
CHILD_DATA_LIMIT = 2 << 30
SHAPE = (5, 12, 14)
SPACING = (2.5, 0.7, 0.8)
CTC = "ctc_level_pg_ml"
CLINICAL = ["--ctc", "12.5", "--age", "54", "--sex", "F", "--location", "anterior"]
#: ``dmfn predict`` with the server replaced by a stand-in that must never get a study.
PREDICT = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_DATA, ({CHILD_DATA_LIMIT}, {CHILD_DATA_LIMIT}))
from dmfn import predict_cli as command
from dmfn.contract.predictions import Provenance

class Contract:
    ctc_features = ({CTC!r},)
    provenance = Provenance()
    roi_margin_mm = 10.0

class Server:
    contract = Contract()
    def __init__(self, *args, **kwargs): pass
    def __enter__(self): return self
    def __exit__(self, *exc): return None
    def predict_many(self, studies, concurrency, return_exceptions):
        if studies:
            raise SystemExit("a hostile study reached the server")
        return []

command.DmfnClient = Server
sys.exit(command.main(sys.argv[1:]))
"""


# --------------------------------------------------------------------------- hostile files
def _dicom_series(folder: Path, rows: int, columns: int, slices: int) -> Path:
    """A CT series whose headers declare ``rows`` x ``columns`` pixels per slice, with 2 bytes
    of pixel data each."""
    write_dicom_series(np.zeros((slices, 2, 2), np.int16), (1.0, 0.7, 0.7), folder)
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.Rows, ds.Columns = rows, columns
        ds.PixelData = b"\0\0"
        ds.save_as(path)
    return folder


def _valid_series(folder: Path, slices: int = 3) -> Path:
    """A small valid CT series of 4 x 5 pixels per slice."""
    write_dicom_series(np.zeros((slices, 4, 5), np.int16), (1.0, 0.7, 0.7), folder)
    return folder


def _nifti(path: Path, shape: tuple[int, ...], data_bytes: int = 1000) -> Path:
    """A NIfTI-1 int16 file whose header declares ``shape``, with ``data_bytes`` of data."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    content = header.binaryblock + b"\0" * 4 + b"\0" * data_bytes
    path.write_bytes(gzip.compress(content) if path.name.endswith(".gz") else content)
    return path


def _nrrd(path: Path, sizes: tuple[int, ...], encoding: str = "raw", data: bytes = b"") -> Path:
    """An int16 NRRD file in LPS space whose header declares ``sizes``, followed by ``data``."""
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {' '.join(map(str, sizes))}\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\n"
        f"endian: little\nencoding: {encoding}\nspace origin: (0,0,0)\n\n"
    )
    path.write_bytes(header.encode() + (data or b"\0" * 1000))
    return path


def _gzip_of_zeros(n_bytes: int) -> bytes:
    """gzip of ``n_bytes`` zero bytes (about a thousandth of that on disk)."""
    deflate = zlib.compressobj(9, wbits=31)
    chunk = bytes(1 << 20)
    parts = [deflate.compress(chunk) for _ in range(n_bytes >> 20)]
    return b"".join([*parts, deflate.flush()])


@dataclass(frozen=True)
class Hostile:
    """A hostile case: what to build, the file named in the error, the field and its values."""

    make: Callable[[Path, Path, Path], tuple[Path, Path]]  # (root, image, mask) -> (image, mask)
    named: str  # a part of the refused file's path that the message must show
    field: str  # the header field and its declared values, as the message gives them
    error: type[ValueError] = ValueError


def _image(make: Callable[[Path], Path]) -> Callable[[Path, Path, Path], tuple[Path, Path]]:
    return lambda root, image, mask: (make(root), mask)


def _mask(make: Callable[[Path], Path]) -> Callable[[Path, Path, Path], tuple[Path, Path]]:
    return lambda root, image, mask: (image, make(root))


CASES: dict[str, Hostile] = {
    "dicom_rows_columns": Hostile(
        _image(lambda root: _dicom_series(root / "dicom", 65535, 65535, 3)),
        "_0000.dcm", "Rows x Columns = 65535 x 65535", DicomError,
    ),
    "dicom_series": Hostile(
        _image(lambda root: _dicom_series(root / "seventeen", 4096, 4096, 17)),
        "seventeen", "slices x Rows x Columns = 17 x 4096 x 4096", DicomError,
    ),
    "nifti": Hostile(
        _image(lambda root: _nifti(root / "big.nii", (1290, 1290, 1290))),
        "big.nii", "dim = 1290 x 1290 x 1290",
    ),
    "nifti_32767": Hostile(
        _image(lambda root: _nifti(root / "huge.nii", (32767, 32767, 32767))),
        "huge.nii", "dim = 32767 x 32767 x 32767",
    ),
    "nifti_gz": Hostile(
        _image(lambda root: _nifti(root / "big.nii.gz", (1290, 1290, 1290))),
        "big.nii.gz", "dim = 1290 x 1290 x 1290",
    ),
    "nifti_gz_truncated": Hostile(  # within the limit: 640^3 int16 is 500 MiB
        _image(lambda root: _nifti(root / "cut.nii.gz", (640, 640, 640))),
        "cut.nii.gz", "truncated: dim = 640 x 640 x 640",
    ),
    "nrrd": Hostile(
        _image(lambda root: _nrrd(root / "big.nrrd", (1290, 1290, 1290))),
        "big.nrrd", "sizes = 1290 x 1290 x 1290",
    ),
    "nrrd_truncated": Hostile(
        _image(lambda root: _nrrd(root / "cut.nrrd", (640, 640, 640))),
        "cut.nrrd", "truncated: sizes = 640 x 640 x 640",
    ),
    "nrrd_gzip_bomb": Hostile(  # declares 64^3 int16 (0.5 MB), inflates to 256 MB
        _image(lambda root: _nrrd(root / "bomb.nrrd", (64, 64, 64), "gzip", _gzip_of_zeros(1 << 28))),
        "bomb.nrrd", "inflates to more than the 524,288 bytes of sizes = 64 x 64 x 64",
    ),
    "mask_seg_nrrd": Hostile(
        _mask(lambda root: _nrrd(root / "big.seg.nrrd", (1290, 1290, 1290))),
        "big.seg.nrrd", "sizes = 1290 x 1290 x 1290",
    ),
    "mask_nifti_gz": Hostile(
        _mask(lambda root: _nifti(root / "big_mask.nii.gz", (1290, 1290, 1290))),
        "big_mask.nii.gz", "dim = 1290 x 1290 x 1290",
    ),
}  # fmt: skip


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, Path]:
    """A small valid image and its mask (NIfTI), for the cases that make the other one hostile."""
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[1:4, 3:8, 4:9] = 1
    return (
        write_nifti_volume(np.zeros(SHAPE, np.int16), SPACING, tmp_path / "ct.nii.gz"),
        write_nifti_mask(lesion, SPACING, tmp_path / "mask.nii.gz"),
    )


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float


#: Runs ``argv[3:]`` and prints its exit status and peak RSS (KiB, or bytes on macOS) as JSON.
#: A small process of its own: Linux carries the RSS high-water mark of the process that forks
#: across exec into the child's ru_maxrss, so forking straight from pytest (hundreds of MB after
#: other tests) would measure pytest.
MEASURE = """
import json, os, subprocess, sys
with open(sys.argv[1], "wb") as out, open(sys.argv[2], "wb") as err:
    child = subprocess.Popen(sys.argv[3:], stdout=out, stderr=err)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({"returncode": child.returncode, "maxrss": usage.ru_maxrss}))
"""


def run_measured(argv: list[str], timeout_s: float = 120.0) -> Run:
    """Run ``argv`` to the end: its exit status, output and peak resident memory (MB), from its
    own rusage, measured by a small parent process (:data:`MEASURE`)."""
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        with subprocess.Popen(
            [sys.executable, "-c", MEASURE, str(out), str(err), *argv],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # one process group: a timeout ends the child too
        ) as measurer:
            try:
                report, _ = measurer.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(measurer.pid, signal.SIGKILL)
                measurer.communicate()
                raise
        assert measurer.returncode == 0, report
        result = json.loads(report)
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, else KiB
        return Run(
            result["returncode"],
            out.read_text(),
            err.read_text(),
            result["maxrss"] * scale / 2**20,
        )


def predict(*arguments: str) -> Run:
    """``dmfn predict ARGUMENTS`` in a child process, the server replaced by a stand-in."""
    return run_measured([sys.executable, "-c", PREDICT, *arguments])


def _one_line(run: Run) -> str:
    """The one line ``dmfn predict`` printed (stderr), after checking it printed nothing else."""
    assert "Traceback" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert run.stdout == ""
    return lines[0]


# --------------------------------------------------------------------------- the cases
@pytest.mark.parametrize("name", list(CASES))
def test_the_reader_refuses_a_hostile_file_from_its_header(
    name: str, tmp_path: Path, study: tuple[Path, Path]
) -> None:
    case = CASES[name]
    image, mask = case.make(tmp_path, *study)
    with pytest.raises(case.error) as caught:
        load_mask(mask, load_image(image))
    message = str(caught.value)
    assert "\n" not in message
    assert case.named in message and case.field in message, message


@pytest.mark.parametrize("name", list(CASES))
def test_predict_refuses_a_hostile_file_in_one_line_and_little_memory(
    name: str, tmp_path: Path, study: tuple[Path, Path]
) -> None:
    case = CASES[name]
    image, mask = case.make(tmp_path, *study)
    run = predict(str(image), "--mask", str(mask), *CLINICAL)
    line = _one_line(run)
    assert run.returncode == P.EXIT_USAGE, line
    assert line.startswith("dmfn predict: ") and case.named in line and case.field in line, line
    assert run.peak_rss_mb < PEAK_RSS_LIMIT_MB, f"{name}: peak RSS {run.peak_rss_mb:.0f} MB"


def test_the_limit_is_max_image_voxels_and_the_message_gives_it(tmp_path: Path) -> None:
    """The readers' limit is contract.limits.MAX_IMAGE_VOXELS: a file just above it is refused,
    and the message gives the limit."""
    side = round(MAX_IMAGE_VOXELS ** (1 / 3)) + 1
    path = _nifti(tmp_path / "above.nii", (side, side, side))
    with pytest.raises(ValueError, match=f"above the limit of {MAX_IMAGE_VOXELS:,} voxels"):
        load_image(path)


# --------------------------------------------------------------------------- folders
def test_a_manifest_image_path_of_proc_is_one_line(
    tmp_path: Path, study: tuple[Path, Path]
) -> None:
    """/proc is a folder, so it is read as a DICOM series: it ends in one line naming the
    manifest row, whatever in /proc stops it (a file this user may not read, or no DICOM)."""
    manifest = tmp_path / "studies.csv"
    manifest.write_text(
        f"image_path,mask_path,{CTC},age_years,sex,location\n/proc,{study[1]},12.5,54,F,anterior\n"
    )
    run = predict("--manifest", str(manifest))
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if "line 2" in line]
    assert len(errors) == 1 and "/proc" in errors[0], run.stderr
    assert run.returncode == P.EXIT_USAGE
    assert run.peak_rss_mb < PEAK_RSS_LIMIT_MB


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder of mode 000")
def test_an_unreadable_folder_is_one_line(tmp_path: Path, study: tuple[Path, Path]) -> None:
    folder = _valid_series(tmp_path / "locked")
    (folder / "inner").mkdir()
    (folder / "inner").chmod(0)
    try:
        run = predict(str(folder), "--mask", str(study[1]), *CLINICAL)
    finally:
        (folder / "inner").chmod(0o755)
    line = _one_line(run)
    assert run.returncode == P.EXIT_USAGE
    assert f"folder {folder / 'inner'}: cannot be read (Permission denied)" in line


def test_an_unreadable_file_in_a_series_folder_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that cannot be read stops the series (no slice is left out silently)."""
    folder = _valid_series(tmp_path / "series")
    locked = sorted(folder.glob("*.dcm"))[1]
    real_stat = Path.stat

    def stat(self: Path, **kwargs: object) -> os.stat_result:
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    with pytest.raises(
        DicomError, match=f"^file {locked}: cannot be read \\(Permission denied\\)$"
    ):
        load_image(folder)


def test_a_folder_that_cannot_be_listed_in_a_series_folder_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the test above, for a sub-folder this user may not list (simulated: it runs as root)."""
    folder = _valid_series(tmp_path / "series")
    (folder / "inner").mkdir()
    real_scandir = os.scandir

    def scandir(path: object) -> object:
        if Path(str(path)) == folder / "inner":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DicomError) as caught:
        load_image(folder)
    assert str(caught.value) == f"folder {folder / 'inner'}: cannot be read (Permission denied)"


def test_a_manifest_path_that_cannot_be_accessed_names_its_column(
    tmp_path: Path, study: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dmfn.client.manifest import read_manifest

    blocked = tmp_path / "no_entry" / "ct"
    real_stat = Path.stat

    def stat(self: Path, **kwargs: object) -> os.stat_result:
        if self == blocked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    manifest = tmp_path / "studies.csv"
    manifest.write_text(
        f"image_path,mask_path,{CTC},age_years,sex,location\n{blocked},{study[1]},1,54,F,middle\n"
    )
    with pytest.raises(ValueError) as caught:
        read_manifest(manifest, None, labelled=False)
    assert str(caught.value) == (
        f"manifest {manifest} line 2, column 'image_path': {blocked} cannot be accessed "
        "(Permission denied)"
    )


def test_empty_files_in_a_series_folder_are_skipped(tmp_path: Path) -> None:
    folder = _valid_series(tmp_path / "series")
    (folder / "empty.dcm").touch()
    assert load_image(folder).hu.shape == (3, 4, 5)


# --------------------------------------------------------------------------- honest files
def test_a_truncated_dicom_slice_is_refused_before_decoding(tmp_path: Path) -> None:
    folder = _dicom_series(tmp_path / "series", 512, 512, 3)
    with pytest.raises(DicomError) as caught:
        load_image(folder)
    assert "truncated: Rows x Columns = 512 x 512 of 16-bit values needs 524,288 bytes" in str(
        caught.value
    )


def test_a_multi_member_nifti_gz_still_loads(tmp_path: Path) -> None:
    """The gzip trailer records only the last member's length; the reader then counts."""
    hu = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    plain = write_nifti_volume(hu, SPACING, tmp_path / "ct.nii")
    content = plain.read_bytes()
    half = len(content) // 2
    joined = tmp_path / "two_members.nii.gz"
    joined.write_bytes(gzip.compress(content[:half]) + gzip.compress(content[half:]))
    np.testing.assert_array_equal(load_image(joined).hu, load_image(plain).hu)


@pytest.mark.parametrize("encoding", ["raw", "gzip", "bzip2", "ascii"])
@pytest.mark.parametrize("endian", ["little", "big"])
@pytest.mark.parametrize("detached", [False, True])
def test_the_bounded_nrrd_reader_equals_pynrrd(
    tmp_path: Path, encoding: str, endian: str, detached: bool
) -> None:
    rng = np.random.default_rng(0)
    for dtype, shape in ((np.int16, (5, 6, 7)), (np.float64, (2, 5, 6, 7)), (np.uint8, (3, 4, 5))):
        data = rng.normal(0, 100, shape).astype(dtype)
        path = tmp_path / f"{np.dtype(dtype).name}.{'nhdr' if detached else 'nrrd'}"
        fields = {"encoding": encoding, "endian": endian}
        if len(shape) == 4:
            fields["kinds"] = ["list", "domain", "domain", "domain"]
        nrrd.write(str(path), data, fields, detached_header=detached, index_order="F")
        expected, _ = nrrd.read(str(path), index_order="F")
        header, start = read_nrrd_header(path)
        got = read_nrrd_data(path, header, start)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_nrrd_byte_skip_and_line_skip_are_honoured(tmp_path: Path) -> None:
    values = np.arange(5 * 6 * 7, dtype="<i2")
    head = "NRRD0004\ntype: short\ndimension: 3\nsizes: 5 6 7\nendian: little\nencoding: raw\n"
    for extra, prefix in (
        ("byte skip: 10\n", b"x" * 10),
        ("byte skip: -1\n", b"x" * 13),
        ("line skip: 2\n", b"one\ntwo\n"),
    ):
        path = tmp_path / "skip.nrrd"
        path.write_bytes(f"{head}{extra}\n".encode() + prefix + values.tobytes())
        header, start = read_nrrd_header(path)
        np.testing.assert_array_equal(
            read_nrrd_data(path, header, start), nrrd.read(str(path), index_order="F")[0]
        )
