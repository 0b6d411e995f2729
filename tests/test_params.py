"""PreprocessParams: every bad value is refused at construction, and it round-trips through JSON."""

from __future__ import annotations

import json
import math

import pytest

from dmfn.contract.params import PARAMS_VERSION, PreprocessParams
from dmfn.preprocess import pde_stability_bound
from dmfn.preprocess._validate import max_voxels

BAD = [
    ({"pde_dt": 0.05}, "pde_dt"),  # above the 3D stability bound
    ({"pde_dt": 0.0}, "pde_dt"),
    ({"pde_mode": "2d", "pde_dt": 0.04}, "pde_dt"),
    ({"pde_k_hu": -1.0}, "pde_k_hu"),
    ({"pde_iterations": 2.5}, "pde_iterations"),
    ({"pde_iterations": -1}, "pde_iterations"),
    ({"pde_mode": "4d"}, "pde_mode"),
    ({"pde_fidelity": math.nan}, "pde_fidelity"),
    ({"target_spacing_mm": 0.0}, "target_spacing_mm"),
    ({"interpolation": "nearest"}, "interpolation"),
    ({"window_level_hu": math.inf}, "window_level_hu"),
    ({"window_width_hu": 0.0}, "window_width_hu"),
    ({"roi_margin_mm": math.nan}, "roi_margin_mm"),
    ({"view_size": 128.0}, "view_size"),
    ({"view_size": 4}, "view_size"),
    ({"max_voxels": 0}, "max_voxels"),
    ({"pde_k_hu": True}, "pde_k_hu"),
    ({"pde_spacing_aware": 1}, "pde_spacing_aware"),
    ({"pde_spacing_aware": "yes"}, "pde_spacing_aware"),
    ({"pde_mode": "3d"}, "pde_dt"),  # the default step is above the 3D bound
]


@pytest.mark.parametrize(("overrides", "argument"), BAD)
def test_bad_values_name_the_argument(overrides: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=f"'{argument}'"):
        PreprocessParams(**overrides)


def test_stability_bound_is_the_pde_bound() -> None:
    PreprocessParams(pde_dt=pde_stability_bound("3d"))
    PreprocessParams(pde_mode="2d", pde_dt=pde_stability_bound("2d"))


def test_json_round_trip_and_digest() -> None:
    params = PreprocessParams(pde_iterations=7, roi_margin_mm=12.5)
    again = PreprocessParams.from_json(params.to_json())
    assert again == params
    assert again.digest() == params.digest() != PreprocessParams().digest()


#: A version-1 parameter set as dmfn stored it with a checkpoint and a model repository
#: (refused today; its fields are the base of the version-2 set below).
VERSION_1 = {
    "interpolation": "linear",
    "max_voxels": 67108864,
    "pde_dt": 0.0125,
    "pde_fidelity": 0.0,
    "pde_iterations": 20,
    "pde_k_hu": 20.0,
    "pde_mode": "3d",
    "roi_margin_mm": 10.0,
    "target_spacing_mm": 1.0,
    "version": 1,
    "view_size": 128,
    "window_level_hu": 50.0,
    "window_width_hu": 350.0,
}


_V2_PDE = {"pde_k_hu": 30.0, "pde_dt": 0.025, "pde_mode": "2d", "pde_spacing_aware": True}


def test_version_2_params_keep_their_views_and_version_1_is_refused() -> None:
    """A stored version-2 set (no lesion_only_views) loads with the context views it was trained
    with; a version-1 set (the unit-grid PDE) is refused with the retrain message."""
    version_2 = PreprocessParams.from_dict({**VERSION_1, **_V2_PDE, "version": 2})
    assert version_2.lesion_only_views is False and version_2.pde_spacing_aware is True
    assert (version_2.pde_k_hu, version_2.pde_dt, version_2.pde_mode) == (30.0, 0.025, "2d")
    assert version_2.version == PARAMS_VERSION == 3
    assert PreprocessParams.from_json(version_2.to_json()) == version_2
    partial = PreprocessParams.from_dict({"version": 2, "view_size": 32})
    assert partial == PreprocessParams(view_size=32, lesion_only_views=False)
    # without a version a dict is read as the current one
    assert PreprocessParams.from_dict({"view_size": 32}) == PreprocessParams(view_size=32)
    assert PreprocessParams().lesion_only_views is True
    with pytest.raises(ValueError, match=r"version 1 are not supported .*train the model again"):
        PreprocessParams.from_json(json.dumps(VERSION_1))


def test_unknown_field_and_version_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        PreprocessParams.from_dict({"pde_iters": 3})
    with pytest.raises(ValueError, match="version"):
        PreprocessParams.from_dict({"version": 99})


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_bad_voxel_cap_environment_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DMFN_MAX_VOXELS", value)
    with pytest.raises(ValueError, match="DMFN_MAX_VOXELS"):
        max_voxels()
