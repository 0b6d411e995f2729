"""The management suggestion: from the whole distribution, 'uncertain' when no option is
confident, a replaceable policy file carried into the repository and published to clients."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dmfn.contract import schema as S
from dmfn.contract.limits import InputLimits
from dmfn.contract.management import UNCERTAIN, load_management, parse_management
from dmfn.contract.params import PreprocessParams
from dmfn.contract.postprocess import Postprocessor
from dmfn.contract.server import ServerContract
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.serving.repository import ModelInfo, write_repository

TAX = load_taxonomy()
POLICY = load_management()


def _probs(**mass: float) -> np.ndarray:
    """A distribution with the given class probabilities, the rest spread evenly."""
    p = np.zeros(len(TAX))
    for name, value in mass.items():
        p[TAX.index(name)] = value
    rest = [i for i in range(len(TAX)) if p[i] == 0]
    p[rest] = (1 - p.sum()) / len(rest)
    return p[None]


def test_default_policy_covers_the_taxonomy_and_says_it_is_not_the_papers() -> None:
    POLICY.check_covers(TAX.names)
    assert "NOT from the paper" in POLICY.note
    assert set(POLICY.options) == {"surgery", "follow-up", "biopsy-and-oncology"}


#: Verbatim copy of dmfn's default policy, contract/data/management_default.json.
DEFAULT_MIN_PROBABILITY = 0.6
DEFAULT_BY_CLASS = {
    "cyst": "follow-up",
    "granuloma": "follow-up",
    "mature_teratoma": "surgery",
    "schwannoma": "surgery",
    "fibroma": "surgery",
    "hemangioma": "follow-up",
    "lipoma": "follow-up",
    "thymoma_A": "surgery",
    "thymoma_AB": "surgery",
    "thymoma_B1": "surgery",
    "thymoma_B2": "surgery",
    "thymoma_B3": "surgery",
    "thymoma_mixed": "surgery",
    "thymic_squamous_cell_carcinoma": "biopsy-and-oncology",
    "immature_teratoma": "biopsy-and-oncology",
    "malt_lymphoma": "biopsy-and-oncology",
    "carcinoid": "surgery",
    "lymphoma": "biopsy-and-oncology",
    "metastatic_tumor": "biopsy-and-oncology",
    "other": "biopsy-and-oncology",
}


def test_default_policy_equals_its_verbatim_copy() -> None:
    """The default policy, class by class and its threshold, pinned against the copy above.

    This test is meant to fail whenever contract/data/management_default.json changes: a change
    of the clinical policy (which class goes to which management, and how sure the model must
    be) has to be a deliberate change of this copy as well, reviewed as such, never a side
    effect of another change (e.g. two classes' options swapped by an edit or a merge).
    """
    assert dict(POLICY.by_class) == DEFAULT_BY_CLASS
    assert POLICY.min_probability == DEFAULT_MIN_PROBABILITY
    # the file's order too (the taxonomy's): it sets the order of the options
    assert list(POLICY.by_class) == list(DEFAULT_BY_CLASS)


def test_a_confident_malignant_spread_is_not_follow_up_because_of_one_benign_top_class() -> None:
    # the case that printed "follow-up" beside 64 % malignant: a benign class on top at 6 %
    thymomas = {n: 0.105 for n in ("thymoma_A", "thymoma_AB", "thymoma_B1", "thymoma_B2",
                                   "thymoma_B3", "thymoma_mixed")}  # fmt: skip
    probs = _probs(cyst=0.11, **thymomas)
    assert TAX.names[int(probs.argmax())] == "cyst"
    assert POLICY.by_class["cyst"] == "follow-up"
    (choice,) = POLICY.suggest(probs, TAX.names)
    assert choice == "surgery"
    assert POLICY.describe(probs[0], TAX.names).startswith("surgery (0.")


def test_no_confident_option_is_uncertain_and_explained() -> None:
    probs = _probs(cyst=0.45, thymoma_B2=0.45)
    (choice,) = POLICY.suggest(probs, TAX.names)
    assert choice == UNCERTAIN
    text = POLICY.describe(probs[0], TAX.names)
    assert text.startswith("uncertain (") and "none reaches 0.60" in text


def test_postprocess_applies_the_policy_it_is_given() -> None:
    logits = np.log(np.vstack([_probs(cyst=0.9), _probs(cyst=0.45, thymoma_B2=0.45)]))
    measurements = np.zeros((2, 5), np.float32)
    out = Postprocessor.of(TAX)(logits, measurements)
    assert out[S.MANAGEMENT].tolist() == [[b"follow-up"], [b"uncertain"]]
    strict = parse_management(json.dumps({"by_class": dict(POLICY.by_class),
                                           "min_probability": 0.95}))  # fmt: skip
    out = Postprocessor.of(TAX, management=strict)(logits, measurements)
    assert out[S.MANAGEMENT].tolist() == [[b"uncertain"], [b"uncertain"]]


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("[]", "needs an object with a 'by_class' object"),
        ('{"by_class": {"cyst": "uncertain"}}', "an option is a non-empty name"),
        ('{"by_class": {"cyst": "surgery"}, "min_probability": 1.5}', "min_probability must be"),
        ("{", "not JSON"),
    ],
)
def test_bad_policy_files_name_the_rule(text: str, rule: str) -> None:
    with pytest.raises(ValueError, match="argument 'management'") as err:
        parse_management(text, "policy.json")
    assert rule in str(err.value) and "policy.json" in str(err.value)


def test_a_policy_missing_classes_is_refused() -> None:
    partial = parse_management('{"by_class": {"cyst": "follow-up"}}', "partial.json")
    with pytest.raises(ValueError, match=r"partial\.json maps no management for class"):
        partial.check_covers(TAX.names)


def test_the_repository_carries_the_policy_to_postprocess_and_to_clients(tmp_path: Path) -> None:
    custom = parse_management(
        json.dumps({"note": "hospital X", "min_probability": 0.7,
                    "by_class": {n: "discuss at tumour board" for n in TAX.names}}),
        "hospital.json",
    )  # fmt: skip
    net = tmp_path / "net.onnx"
    net.write_bytes(b"copied only")
    limits = InputLimits(ctc_ranges=((0.0, 80.0),))
    info = ModelInfo(ctc_features=("ctc_level_pg_ml",), limits=limits, management=custom)
    repo = write_repository(tmp_path / "repo", net_file=net, params=PreprocessParams(view_size=64),
                            taxonomy=TAX, info=info)  # fmt: skip
    stored = load_management(repo / "postprocess" / "management.json")
    assert stored.by_class == custom.by_class and stored.min_probability == 0.7
    assert 'key: "management_file"' in (repo / "postprocess" / "config.pbtxt").read_text()
    card = (repo / "MODEL_CARD.md").read_text()
    assert "## Management suggestion" in card and "hospital X" in card
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    text = (repo / "dmfn_pipeline" / "config.pbtxt").read_text()
    pipeline = text_format.Parse(text, mc.ModelConfig())
    params = {k: v.string_value for k, v in pipeline.parameters.items()}
    contract = ServerContract.from_parameters(params)
    assert contract.management is not None and contract.management.by_class == custom.by_class
