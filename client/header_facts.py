"""Age and sex of the patient from a DICOM header, unless the user gives them.

Age: the command line's value, else PatientAge (``nnnD/W/M/Y``), else the years between
PatientBirthDate and StudyDate (or SeriesDate); sex: the command line's, else PatientSex (M or
F; O or empty asks for ``--sex``). Each value comes with where it came from, so the caller can
print it and store it in the report (:class:`Fact`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pydicom

#: Days per unit of a DICOM Age String (AS) value.
_AGE_UNIT_DAYS = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


@dataclass(frozen=True)
class Fact:
    """A value used for prediction and its source (``"command line"``, ``"DICOM PatientAge
    054Y"``, ...)."""

    value: str
    source: str

    def __str__(self) -> str:
        return f"{self.value} ({self.source})"


def age_years_from_header(header: pydicom.Dataset) -> Fact | None:
    """The patient's age in years from PatientAge, else PatientBirthDate and StudyDate (or
    SeriesDate); None when the header says neither. A malformed value raises ValueError naming
    the attribute."""
    text = str(header.get("PatientAge", "") or "").strip().upper()
    if text:
        number, unit = text[:-1], text[-1:]
        if unit not in _AGE_UNIT_DAYS or not number.isdigit():
            raise ValueError(f"DICOM PatientAge {text!r} is not an age string such as 054Y")
        years = int(number) * _AGE_UNIT_DAYS[unit] / 365.25
        return Fact(f"{years:g}" if unit == "Y" else f"{years:.2f}", f"DICOM PatientAge {text}")
    birth = _date(header, "PatientBirthDate")
    on, where = _date(header, "StudyDate"), "StudyDate"
    if on is None:
        on, where = _date(header, "SeriesDate"), "SeriesDate"
    if birth is None or on is None:
        return None
    if on < birth:
        raise ValueError(f"DICOM PatientBirthDate {birth} is after {where} {on}")
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return Fact(str(years), f"DICOM PatientBirthDate and {where}")


def sex_from_header(header: pydicom.Dataset) -> Fact | None:
    """``M`` or ``F`` from PatientSex; None when it is empty, ``O`` or absent."""
    text = str(header.get("PatientSex", "") or "").strip().upper()
    return Fact(text, "DICOM PatientSex") if text in ("M", "F") else None


def _date(header: pydicom.Dataset, keyword: str) -> dt.date | None:
    text = str(header.get(keyword, "") or "").strip()
    if not text:
        return None
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        raise ValueError(f"DICOM {keyword} {text!r} is not a date (YYYYMMDD)") from None


def patient_facts(
    header: pydicom.Dataset, age_years: str | None, sex: str | None
) -> tuple[Fact, Fact]:
    """The (age in years, sex) to predict with: the given values, else the header's.

    ValueError names the option to give when the header does not say (``--age``, ``--sex``).
    """
    age = Fact(age_years, "command line") if age_years else age_years_from_header(header)
    if age is None:
        raise ValueError(
            "--age: the DICOM header has neither PatientAge nor PatientBirthDate with a "
            "StudyDate; give --age"
        )
    given_sex = Fact(sex, "command line") if sex else sex_from_header(header)
    if given_sex is None:
        raise ValueError("--sex: the DICOM header's PatientSex is not M or F; give --sex")
    return age, given_sex
