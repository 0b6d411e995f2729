"""Heat maps of what the model looked at: Grad-CAM (Selvaraju et al., ICCV 2017) of the predicted
class, in-process (docs/explain.md).

The map is Captum's ``LayerGradCam`` on the last convolutional stage of the CT backbone
(``model.ct.backbone.stages[-1]``, the last feature map before global average pooling; 8 x 8 cells
for 128-pixel views of the default backbone), ReLU'd, upsampled bilinearly to the views' S x S
pixels and divided by its maximum, so it lies in [0, 1] (all 0 when no cell speaks for the class).

The three views (axial, coronal, sagittal) enter the backbone as the three channels of one image,
so every convolution mixes them at each pixel: the backbone has one spatial map, and Grad-CAM gives
one S x S map, drawn on each view. Which view the class depends on is measured apart, by occlusion
(:attr:`Explanation.view_occlusion`).

The lesion outline on each view is the preprocessing's own lesion mask (cropped, resampled to the
isotropic grid, thresholded), sampled on the view's plane by :func:`orthogonal_views` with the
geometry the views were made with (:func:`lesion_views`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmfn.contract.params import PreprocessParams
from dmfn.contract.postprocess import softmax
from dmfn.contract.roi import mask_bbox, roi_box
from dmfn.contract.study import Study
from dmfn.contract.wire import build_request, decode_item
from dmfn.preprocess import orthogonal_views, preprocess_request
from dmfn.preprocess.pipeline import MASK_THRESHOLD, resample_mask

from .inference import LocalPredictor

logger = logging.getLogger(__name__)

#: The views' names, in channel order (``orthogonal_views``).
VIEW_NAMES = ("axial", "coronal", "sagittal")
#: The map's name in docs and titles.
METHOD = "Grad-CAM"
#: A sampled lesion-mask value at or above this is inside the lesion outline (as the
#: preprocessing thresholds the resampled mask).
OUTLINE_LEVEL = MASK_THRESHOLD
#: Overlay opacity of the map in the PNGs.
OVERLAY_ALPHA = 0.45
#: A name for written files: letters, digits, ``._-``, not starting with a dot.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Explanation:
    """The heat map of one study's predicted class, with what it is drawn on.

    Attributes:
        image_id: the study's image id ("" when it has none).
        label: the study's true class when known, else None.
        predicted: the predicted class (the most probable; ties to the lower index).
        probability: its calibrated probability (the served ``PROBS``).
        probs: float32 [C] calibrated probabilities, in the checkpoint's class order.
        views: float32 [3, S, S], the model's input views (axial, coronal, sagittal) in [0, 1].
        cam: float32 [3, S, S] in [0, 1]: the Grad-CAM map, the same on each view (see the module
            docstring).
        lesion: bool [3, S, S]: the lesion mask on each view's plane.
        view_occlusion: float32 [3]: the predicted class's probability minus its probability with
            that view set to 0 (the background of lesion-only views); larger = the class leans
            more on that view.
        layer: the module the map was taken at.
    """

    image_id: str
    label: str | None
    predicted: str
    probability: float
    probs: np.ndarray
    views: np.ndarray
    cam: np.ndarray
    lesion: np.ndarray
    view_occlusion: np.ndarray
    layer: str

    @property
    def correct(self) -> bool | None:
        """Whether the prediction equals the label (None without a label)."""
        return None if self.label is None else self.label == self.predicted

    @property
    def entropy(self) -> float:
        """Shannon entropy (nats) of the calibrated probabilities."""
        p = self.probs.astype(np.float64)
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    def lesion_mass(self) -> np.ndarray:
        """float64 [3, 2] per view: (the map's share of its mass inside the lesion, the lesion's
        share of the view's area). A map that favours the lesion has the first above the second;
        NaN mass share for an all-zero map."""
        out = np.empty((3, 2))
        for v in range(3):
            total = float(self.cam[v].sum(dtype=np.float64))
            inside = float(self.cam[v][self.lesion[v]].sum(dtype=np.float64))
            out[v] = (inside / total if total > 0 else math.nan, float(self.lesion[v].mean()))
        return out


def lesion_views(
    mask: np.ndarray, spacing_mm: Sequence[float], params: PreprocessParams
) -> np.ndarray:
    """The lesion mask on the planes of the three views, float32 [3, S, S] in [0, 1].

    The same steps as :func:`dmfn.preprocess.preprocess_study` takes with the mask: the ROI crop
    (lesion box + ``params.roi_margin_mm``), :func:`resample_mask` to
    ``params.target_spacing_mm``, then :func:`orthogonal_views` of the resampled mask through its
    own centroid and box with the margin in voxels: so each pixel is the bilinear sample of the
    resampled mask at the point the view's pixel samples. ``mask`` is the (z, y, x) mask the
    preprocessing receives (the request's, :func:`decode_item`); ``>= OUTLINE_LEVEL`` is inside.
    """
    spacing = tuple(float(s) for s in spacing_mm)
    box = roi_box(*mask_bbox(mask), mask.shape, params.roi_margin_mm, spacing)
    roi_mask = np.ascontiguousarray(mask[box] != 0, dtype=np.uint8)
    iso_mask = resample_mask(roi_mask, spacing, params.target_spacing_mm, params.max_voxels)
    margin = params.roi_margin_mm / params.target_spacing_mm
    return orthogonal_views(
        iso_mask.astype(np.float32), iso_mask, params.view_size, margin_vox=margin, fill=0.0,
        max_voxels=params.max_voxels,
    )  # fmt: skip


def cam_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the last convolutional stage of ``model``'s CT backbone.

    Raises:
        ValueError: the model has no CT backbone with ``stages`` (the tabular baseline).
    """
    ct = getattr(model, "ct", None)
    stages = getattr(getattr(ct, "backbone", None), "stages", None)
    if not isinstance(stages, nn.Sequential) or len(stages) == 0:
        raise ValueError(
            f"argument 'checkpoint': a {type(model).__name__} has no CT backbone with "
            "convolutional stages, so it has no image heat map"
        )
    return f"ct.backbone.stages.{len(stages) - 1}", stages[-1]


def grad_cam(
    model: nn.Module,
    layer: nn.Module,
    views: torch.Tensor,
    tabular: torch.Tensor,
    target: int,
) -> np.ndarray:
    """Grad-CAM of class ``target`` at ``layer`` for one study (``views`` [1, 3, S, S],
    ``tabular`` [1, T]): float32 [S, S] in [0, 1] (the ReLU'd map upsampled bilinearly, divided
    by its maximum; all 0 if the maximum is 0)."""
    from captum.attr import LayerAttribution, LayerGradCam  # 1-2 s to import (it loads pyplot)

    size = tuple(views.shape[-2:])
    with torch.enable_grad():
        cam = LayerGradCam(model, layer).attribute(
            (views, tabular), target=target, relu_attributions=True
        )
        up = LayerAttribution.interpolate(cam.detach(), size, interpolate_mode="bilinear")
    out = up[0, 0].numpy().astype(np.float32)
    peak = float(out.max())
    return out / peak if peak > 0 else np.zeros_like(out)


class Explainer:
    """Heat maps from one checkpoint (or a :class:`LocalPredictor`, whose model and contract it
    shares), built once and used for many studies."""

    def __init__(self, checkpoint_or_predictor: str | Path | LocalPredictor) -> None:
        predictor = (
            checkpoint_or_predictor
            if isinstance(checkpoint_or_predictor, LocalPredictor)
            else LocalPredictor(checkpoint_or_predictor, audit=False)
        )
        self.predictor = predictor
        self.model = predictor.model.eval()
        self.params: PreprocessParams = predictor.checkpoint.preprocess_params
        self.temperature = float(predictor.checkpoint.temperature)
        self.class_names = tuple(predictor.contract.class_names)
        self.layer_name, self.layer = cam_layer(self.model)

    def inputs(self, study: Study) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(views [3, S, S], tabular [T], lesion views [3, S, S] in [0, 1]) of ``study``: the
        request bytes and preprocessing of the served path."""
        arrays = build_request(study, self.predictor.contract)
        (pre,) = preprocess_request(arrays, self.params)
        wire = decode_item(arrays, 0, None, self.params.max_voxels)
        lesion = lesion_views(wire.mask, wire.spacing_mm, self.params)
        return pre.views, pre.tabular, lesion

    def probabilities(self, views: torch.Tensor, tabular: torch.Tensor) -> np.ndarray:
        """Calibrated probabilities [B, C] (as the served ``PROBS``)."""
        with torch.no_grad():
            return softmax(self.model(views, tabular).numpy(), self.temperature)

    def explain(self, study: Study) -> Explanation:
        """The :class:`Explanation` of ``study`` (ValueError for a study the server refuses)."""
        views_np, tabular_np, lesion = self.inputs(study)
        views = torch.from_numpy(views_np[None])
        tabular = torch.from_numpy(tabular_np[None])
        probs = self.probabilities(views, tabular)[0]
        target = int(np.argmax(probs))
        cam = grad_cam(self.model, self.layer, views, tabular, target)
        occluded = views.repeat(3, 1, 1, 1)
        for v in range(3):
            occluded[v, v] = 0.0
        without = self.probabilities(occluded, tabular.repeat(3, 1))[:, target]
        return Explanation(
            image_id=study.image_id,
            label=study.label,
            predicted=self.class_names[target],
            probability=float(probs[target]),
            probs=probs,
            views=views_np,
            cam=np.repeat(cam[None], 3, axis=0),
            lesion=lesion >= OUTLINE_LEVEL,
            view_occlusion=(probs[target] - without).astype(np.float32),
            layer=self.layer_name,
        )


def explain_study(
    checkpoint_or_predictor: str | Path | LocalPredictor, study: Study
) -> Explanation:
    """The Grad-CAM :class:`Explanation` of ``study``'s predicted class (for many studies, make
    one :class:`Explainer` and call its ``explain``)."""
    return Explainer(checkpoint_or_predictor).explain(study)


def cascade_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's layers from the logits down, for cascading randomisation (Adebayo et al.,
    NeurIPS 2018): the heads on top of the branches, the CT projection, the backbone's blocks
    from the last to the first, its stem, then the tabular branch. Each entry is (name, module)."""
    cam_layer(model)  # refuses a model without a CT backbone
    ct: Any = model.ct
    backbone: Any = ct.backbone
    top = [(n, m) for n, m in model.named_children() if n not in ("ct", "tabular")]
    blocks: list[tuple[str, nn.Module]] = []
    for i, stage in enumerate(backbone.stages):
        if isinstance(stage, nn.Sequential):
            blocks += [(f"ct.backbone.stages.{i}.{j}", block) for j, block in enumerate(stage)]
        else:
            blocks.append((f"ct.backbone.stages.{i}", stage))
    out = [*top, ("ct.project", ct.project), *reversed(blocks), ("ct.backbone.stem", backbone.stem)]
    if hasattr(model, "tabular"):
        out.append(("tabular", model.tabular))
    return out


def reinitialise(module: nn.Module, generator: torch.Generator) -> None:
    """Draw ``module``'s weights afresh as at the start of training: convolutions He
    (fan-out, normal), linear layers N(0, 0.01), BatchNorm weight 1 / bias 0 / running mean 0 /
    running variance 1 (the backbones' ``init_weights``); other parameters N(0, 0.01)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.reset_parameters()
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.01, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
            else:
                for p in m.parameters(recurse=False):
                    p.normal_(0.0, 0.01, generator=generator)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' pixels; 0.0 when either map is constant (an all-0
    map keeps none of the other's ranking)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def cascading_randomisation(
    explainer: Explainer, studies: Sequence[Study], seed: int = 0, *, every_step: bool = True
) -> list[tuple[str, np.ndarray]]:
    """Adebayo et al.'s cascading randomisation: re-initialise :func:`cascade_layers` from the
    logits down, cumulatively (:func:`reinitialise`, a generator seeded with ``seed``), and after
    each layer compare the map of the trained net's predicted class with the trained net's map.

    Returns:
        (layer name, float64 [len(studies)] Spearman rank correlations) per step, top first;
        the last step is the fully randomised net (the only one with ``every_step=False``).
        The explainer's model is not changed.
    """
    import copy

    inputs = []
    for study in studies:
        views_np, tabular_np, _ = explainer.inputs(study)
        views, tabular = torch.from_numpy(views_np[None]), torch.from_numpy(tabular_np[None])
        target = int(np.argmax(explainer.probabilities(views, tabular)[0]))
        trained = grad_cam(explainer.model, explainer.layer, views, tabular, target)
        inputs.append((views, tabular, target, trained))
    model = copy.deepcopy(explainer.model).eval()
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    out = []
    layers = cascade_layers(model)
    for k, (name, _) in enumerate(layers):
        reinitialise(modules[name], generator)
        if not every_step and k < len(layers) - 1:
            continue
        _, layer = cam_layer(model)
        r = [rank_correlation(trained, grad_cam(model, layer, v, t, target))
             for v, t, target, trained in inputs]  # fmt: skip
        out.append((name, np.array(r)))
    return out


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise ValueError(
            f"argument 'name': must be letters, digits, '.', '_' or '-' (not starting with '.'), "
            f"got {name!r}"
        )
    return name


def _title(e: Explanation) -> str:
    truth = "" if e.label is None else f"  (true: {e.label})"
    return f"{e.image_id or 'study'}: predicted {e.predicted}, p = {e.probability:.2f}{truth}"


def _draw_row(axes: Sequence[Any], e: Explanation) -> None:
    for v, ax in enumerate(axes):
        ax.imshow(e.views[v], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.imshow(e.cam[v], cmap="jet", vmin=0.0, vmax=1.0, alpha=OVERLAY_ALPHA)
        if e.lesion[v].any():
            ax.contour(e.lesion[v].astype(np.float32), levels=[0.5], colors="lime",
                       linewidths=0.8)  # fmt: skip
        ax.set_title(f"{VIEW_NAMES[v]}  (without it: p {-e.view_occlusion[v]:+.2f})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])


def write_explanation(explanation: Explanation, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``<name>_views.png`` (the three views side by side, the map as a translucent
    overlay, the lesion outline in green, the predicted class and probability in the title) and
    ``<name>_cam.npy`` (the maps, float32 [3, S, S]) into ``out_dir`` (made if missing).

    Returns:
        the two paths, PNG first.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _check_name(name)
    png, npy = out / f"{stem}_views.png", out / f"{stem}_cam.npy"
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 3.4))
    try:
        _draw_row(axes, explanation)
        fig.suptitle(f"{METHOD}: {_title(explanation)}", fontsize=9)
        fig.tight_layout()
        fig.savefig(png, dpi=100)
    finally:
        plt.close(fig)
    np.save(npy, explanation.cam.astype(np.float32, copy=False))
    return [png, npy]


#: The gallery's groups, in display order, with how each is ranked.
GALLERY_GROUPS = (
    ("most confident right", "right, highest probability of the predicted class"),
    ("most confident wrong", "wrong, highest probability of the predicted class"),
    ("most uncertain", "highest entropy of the calibrated probabilities"),
)


@dataclass
class GalleryPicker:
    """Keeps, of the labelled explanations it is given, the ``n`` most confident right, the
    ``n`` most confident wrong and the ``n`` most uncertain (highest entropy; a study may be in
    two groups); :meth:`write` draws them."""

    n: int = 3
    groups: dict[str, list[Explanation]] = field(default_factory=dict)
    seen: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"argument 'n': must be an integer >= 1, got {self.n!r}")
        self.groups = {name: [] for name, _ in GALLERY_GROUPS}

    def add(self, e: Explanation) -> None:
        """Consider ``e`` (ignored without a label)."""
        if e.correct is None:
            return
        self.seen += 1
        confident = "most confident right" if e.correct else "most confident wrong"
        self._keep(confident, e, lambda x: x.probability)
        self._keep("most uncertain", e, lambda x: x.entropy)

    def _keep(self, group: str, e: Explanation, score: Callable[[Explanation], float]) -> None:
        kept = self.groups[group]
        kept.append(e)
        kept.sort(key=score, reverse=True)  # stable: earlier studies win ties
        del kept[self.n :]

    def write(self, out_dir: str | Path, name: str = "gallery") -> list[Path]:
        """Write ``<name>.png`` (one row per picked study, grouped) and ``<name>.md`` (an index:
        group, image id, true and predicted class, probability, entropy, the map's mass share in
        the lesion over the lesion's area share per view). Returns the two paths, PNG first.

        Raises:
            ValueError: no labelled study was added.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [(g, e) for g, _ in GALLERY_GROUPS for e in self.groups[g]]
        if not rows:
            raise ValueError("argument 'studies': no labelled study to draw a gallery of")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = _check_name(name)
        png, md = out / f"{stem}.png", out / f"{stem}.md"
        fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.5 * len(rows)), squeeze=False)
        try:
            for (group, e), row in zip(rows, axes, strict=True):
                _draw_row(row, e)
                row[0].set_ylabel(
                    f"{group}\n{e.image_id}\n{e.predicted} p={e.probability:.2f}\n(true {e.label})",
                    fontsize=7,
                )
            fig.suptitle(f"{METHOD} of the predicted class ({self.seen} labelled studies)")
            fig.tight_layout()
            fig.savefig(png, dpi=70)
        finally:
            plt.close(fig)
        md.write_text(_gallery_index(rows, png.name, self.seen), encoding="utf-8")
        return [png, md]


def _gallery_index(rows: list[tuple[str, Explanation]], png: str, seen: int) -> str:
    lines = [
        f"# {METHOD} gallery",
        "",
        f"![gallery]({png})",
        "",
        f"Of {seen} labelled studies: "
        + "; ".join(f"**{g}**: {rule}" for g, rule in GALLERY_GROUPS)
        + ". Lesion ratio: the map's share of its mass inside the lesion outline over the "
        "lesion's share of the view's area (> 1: the map favours the lesion), axial / coronal / "
        "sagittal.",
        "",
        "| group | image | true | predicted | p | entropy (nats) | lesion ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, e in rows:
        mass = e.lesion_mass()
        ratio = " / ".join(f"{m / a:.2f}" if a > 0 else "-" for m, a in mass)
        lines.append(
            f"| {group} | {e.image_id} | {e.label} | {e.predicted} | {e.probability:.3f} | "
            f"{e.entropy:.2f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def explain_gallery(
    checkpoint: str | Path | LocalPredictor,
    studies_with_labels: Iterable[Study],
    out_dir: str | Path,
    n: int = 3,
) -> list[Path]:
    """The gallery (:class:`GalleryPicker`) of ``studies_with_labels`` (studies without a label
    are skipped) written to ``out_dir`` as ``gallery.png`` + ``gallery.md``; returns the paths."""
    explainer = Explainer(checkpoint)
    picker = GalleryPicker(n)
    for study in studies_with_labels:
        picker.add(explainer.explain(study))
    return picker.write(out_dir)


__all__ = [
    "GALLERY_GROUPS",
    "METHOD",
    "VIEW_NAMES",
    "Explainer",
    "Explanation",
    "GalleryPicker",
    "cam_layer",
    "cascade_layers",
    "cascading_randomisation",
    "explain_gallery",
    "explain_study",
    "grad_cam",
    "lesion_views",
    "rank_correlation",
    "reinitialise",
    "write_explanation",
]
