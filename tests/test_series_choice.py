"""The documented rule that picks a study's CT series, and age/sex from a DICOM header."""

from __future__ import annotations

import pydicom
import pytest

from dmfn.client.header_facts import age_years_from_header, patient_facts, sex_from_header
from dmfn.client.series_choice import SeriesCandidate, SeriesChoiceError, choose_series

AXIAL = [1, 0, 0, 0, 1, 0]
CORONAL = [1, 0, 0, 0, 0, -1]


def _header(uid: str, *, iop=AXIAL, contrast: str = "", thickness: str = "1.0", kind=None):
    ds = pydicom.Dataset()
    ds.SeriesInstanceUID = uid
    ds.SeriesDescription = f"series {uid}"
    ds.ImageOrientationPatient = iop
    ds.ContrastBolusAgent = contrast
    ds.SliceThickness = thickness
    ds.ImageType = kind or ["ORIGINAL", "PRIMARY", "AXIAL"]
    return ds


def _candidate(uid: str, n: int = 100, **kwargs: object) -> SeriesCandidate:
    return SeriesCandidate.of(_header(uid, **kwargs), n)  # type: ignore[arg-type]


def test_one_series_is_chosen_without_a_reason_to_give() -> None:
    choice = choose_series([_candidate("1.1")])
    assert choice.chosen.uid == "1.1"
    assert "the only CT series" in choice.explain()


def test_each_step_of_the_rule_decides_in_its_order() -> None:
    scout = _candidate("1.1", n=2, kind=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    coronal = _candidate("1.2", iop=CORONAL, contrast="IODINE", thickness="0.5")
    plain = _candidate("1.3", thickness="0.5")
    thick = _candidate("1.4", contrast="IODINE", thickness="5")
    thin_few = _candidate("1.5", n=80, contrast="IODINE", thickness="1.0")
    thin_many = _candidate("1.6", n=300, contrast="IODINE", thickness="1.0")
    choice = choose_series([scout, coronal, plain, thick, thin_few, thin_many])
    assert choice.chosen.uid == "1.6"
    steps = " ".join(choice.reasons)
    for word in ("localizer", "axial", "contrast", "thinnest", "most slices"):
        assert word in steps
    # each step only when it decides: the contrast step keeps the axial series with contrast
    assert choose_series([plain, thin_many]).chosen.uid == "1.6"
    assert choose_series([coronal, plain]).chosen.uid == "1.3"  # axial beats a thinner reformat
    assert choose_series([thick, thin_few]).chosen.uid == "1.5"


def test_a_tie_is_refused_in_one_line_listing_the_series() -> None:
    with pytest.raises(SeriesChoiceError) as err:
        choose_series([_candidate("1.1"), _candidate("1.2")], where="study 9")
    message = str(err.value)
    assert "\n" not in message
    assert "--series-uid" in message and "1.1" in message and "1.2" in message


def test_series_uid_chooses_and_must_exist() -> None:
    candidates = [_candidate("1.1"), _candidate("1.2")]
    assert choose_series(candidates, "1.2").chosen.uid == "1.2"
    with pytest.raises(SeriesChoiceError, match=r"--series-uid 9\.9 is not a CT series"):
        choose_series(candidates, "9.9")
    with pytest.raises(SeriesChoiceError, match="no CT series"):
        choose_series([])


@pytest.mark.parametrize(
    ("attributes", "years"),
    [
        ({"PatientAge": "054Y"}, "54"),
        ({"PatientAge": "018M"}, "1.50"),
        ({"PatientBirthDate": "19700615", "StudyDate": "20240614"}, "53"),
        ({"PatientBirthDate": "19700615", "StudyDate": "20240615"}, "54"),
        ({"PatientBirthDate": "19700615", "SeriesDate": "20240615"}, "54"),
    ],
)
def test_age_from_the_header(attributes: dict[str, str], years: str) -> None:
    ds = pydicom.Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    fact = age_years_from_header(ds)
    assert fact is not None and fact.value == years
    assert "DICOM" in fact.source


def test_missing_or_malformed_facts_name_the_option() -> None:
    ds = pydicom.Dataset()
    ds.PatientSex = "O"
    assert age_years_from_header(ds) is None and sex_from_header(ds) is None
    with pytest.raises(ValueError, match="--age"):
        patient_facts(ds, None, "F")
    with pytest.raises(ValueError, match="--sex"):
        patient_facts(ds, "50", None)
    age, sex = patient_facts(ds, "50", "F")
    assert (age.value, age.source, sex.value) == ("50", "command line", "F")
    with pytest.warns(UserWarning, match="Invalid value"):  # pydicom warns on the bad AS
        ds.PatientAge = "5OY"
    with pytest.raises(ValueError, match="PatientAge"):
        age_years_from_header(ds)
    with pytest.warns(UserWarning, match="Invalid value"):  # lower case, as some PACS send it
        ds.PatientSex = "f"
    sex_fact = sex_from_header(ds)
    assert sex_fact is not None and sex_fact.value == "F"
