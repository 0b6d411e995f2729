"""Write a complete Triton model repository for one exported model (no torch here).

A repository written by :func:`write_repository` holds::

    MODEL_CARD.md                 training data, metrics, versions; "synthetic data" warning
    dmfn_manifest.json            schema, target, CTC features, digests (read by ``dmfn serve``)
    preprocess/config.pbtxt, 1/model.py, preprocess_params.json
    dmfn/config.pbtxt, labels.txt, 1/model.onnx (+ 1/model.py for target cpu) | 1/model.plan
    postprocess/config.pbtxt, 1/model.py, taxonomy.csv, labels.txt
    dmfn_pipeline/config.pbtxt, 1/, labels.txt

The ``model.py`` files are copied from the committed ``model_repository/`` of the project; the
configs are rendered from :class:`dmfn.contract.schema.Schema` by :mod:`dmfn.serving.config`. The
repository is built in a temporary sibling folder and moved into place, so a failure never leaves
half a repository behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dmfn
from dmfn.contract import schema as S
from dmfn.contract.errors import InvalidInput
from dmfn.contract.limits import InputLimits
from dmfn.contract.management import ManagementPolicy, load_management
from dmfn.contract.params import PreprocessParams
from dmfn.contract.predictions import Provenance
from dmfn.contract.schema import Schema
from dmfn.contract.server import ServerContract
from dmfn.contract.taxonomy import Taxonomy
from dmfn.contract.uncertainty import Uncertainty
from dmfn.resources import TEMPLATE_ENV, model_repository_templates

from .config import (
    LABELS_FILE,
    MANAGEMENT_FILE,
    MODEL_NAMES,
    NET_MODEL_FILES,
    PARAMS_FILE,
    TAXONOMY_FILE,
    UNCERTAINTY_FILE,
    ServingSettings,
    render_all,
)

log = logging.getLogger(__name__)

#: Input limits of the committed template configs only; `dmfn export` writes the model's own
#: (its CTC range comes from the training data).
TEMPLATE_LIMITS = InputLimits(ctc_ranges=((0.0, 100.0),))
MANIFEST_FILE = "dmfn_manifest.json"
MODEL_CARD_FILE = "MODEL_CARD.md"
#: model name -> python-backend files copied from the committed repository, per target.
_PYTHON_MODELS = (S.PREPROCESS_MODEL, S.NET_MODEL, S.POSTPROCESS_MODEL)


def template_dir() -> Path:
    """The committed Triton model templates holding the ``model.py`` files
    (:func:`dmfn.resources.model_repository_templates`); ValueError if they are missing."""
    path = model_repository_templates()
    if not (path / S.PREPROCESS_MODEL / "1" / "model.py").is_file():
        raise ValueError(
            f"the Triton model templates are missing from {path} (no "
            f"{S.PREPROCESS_MODEL}/1/model.py); reinstall dmfn or set {TEMPLATE_ENV}"
        )
    return path


@dataclass(frozen=True)
class ModelInfo:
    """What the model card and manifest say about the exported model (plain data, no torch)."""

    ctc_features: tuple[str, ...]
    metrics: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    model_config: Mapping[str, Any] = field(default_factory=dict)
    synthetic: bool = True
    checkpoint: str = ""
    parity: Mapping[str, float] = field(default_factory=dict)
    #: The input limits the server enforces (CTC ranges from the training data).
    limits: InputLimits | None = None
    #: Which checkpoint this is (sha256, training date, synthetic), published to clients.
    provenance: Provenance = field(default_factory=Provenance)
    #: Calibration temperature applied by postprocess (``softmax(logits / T)``).
    temperature: float = 1.0
    #: The management policy postprocess applies (None: dmfn's default).
    management: ManagementPolicy | None = None
    #: The class-set and OOD fits postprocess applies (None: empty sets, no flag).
    uncertainty: Uncertainty | None = None

    @property
    def management_policy(self) -> ManagementPolicy:
        return self.management or load_management()


def model_card_text(info: ModelInfo, taxonomy: Taxonomy, schema: Schema, target: str) -> str:
    """Markdown model card: intended use, training data, metrics, versions, limitations."""
    lines = ["# DMFN model card", ""]
    if info.synthetic:
        lines += [
            "> **WARNING: trained on SYNTHETIC data.** The numbers below are pipeline checks, not "
            "clinical performance. Do not use this model for patient care.",
            "",
        ]
    lines += [
        "Deep multimodal fusion network: chest CT lesion views + circulating-tumour-cell (CTC) "
        "level + clinical facts -> probabilities over mediastinal lesion classes.",
        "",
        f"- checkpoint: `{info.checkpoint or 'n/a'}` (sha256 {info.provenance.sha256 or 'n/a'}, "
        f"trained {info.provenance.trained or 'n/a'})",
        f"- calibration temperature (fitted on validation): {info.temperature:.3g}",
        "- uncertainty: "
        + (
            info.uncertainty.describe() if info.uncertainty else "none (no class sets, no OOD flag)"
        ),
        f"- serving target: `{target}`",
        f"- architecture: `{json.dumps(dict(info.model_config), sort_keys=True, default=str)}`",
        f"- classes ({schema.n_classes}, logit order): {', '.join(taxonomy.names)}",
        f"- taxonomy: {taxonomy.source} (sha256 {taxonomy.digest()[:16]})",
        f"- CTC features (TABULAR order): {', '.join(info.ctc_features)}; clinical: "
        f"{', '.join(S.CLINICAL_FIELDS)}",
        f"- views: 3 x {schema.view_size} x {schema.view_size} (axial, coronal, sagittal)",
        "",
        "## Training data",
        "",
        "Synthetic cohort generated by `dmfn synth`."
        if info.synthetic
        else "User-supplied cohort.",
        "",
        "```json",
        json.dumps(dict(info.training), indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Metrics",
        "",
    ]
    lines += metrics_table(info.metrics)
    if info.limits is not None:
        lines += [
            "",
            "## Accepted inputs",
            "",
            "Requests outside these ranges are refused (HTTP 400 / gRPC INVALID_ARGUMENT) with a "
            "message naming the field and the range:",
            "",
            *info.limits.describe(info.ctc_features),
        ]
    policy = info.management_policy
    options = {o: [c for c, m in policy.by_class.items() if m == o] for o in policy.options}
    lines += [
        "",
        "## Management suggestion",
        "",
        f"Policy `{policy.source}` (sha256 {policy.digest()[:16]}). {policy.note}",
        "",
        f"MANAGEMENT is the option whose classes' summed probability reaches "
        f"{policy.min_probability:.2f}, else `uncertain`. Not from the paper.",
        "",
        *[f"- {o}: {', '.join(classes)}" for o, classes in options.items()],
    ]
    if info.parity:
        lines += ["", "## Export checks", ""]
        lines += [f"- {k}: {v:.3g}" for k, v in sorted(info.parity.items())]
    lines += [
        "",
        "## Versions",
        "",
        *[f"- {k}: {v}" for k, v in sorted(info.versions.items())],
        "",
        "## Limitations",
        "",
        "Research software. Outputs are decision support for trained readers; the management "
        "suggestion follows the policy above, a local choice rather than evidence.",
        "",
    ]
    return "\n".join(lines)


#: Metrics of the model card table, in this order: key -> label.
CARD_METRICS = {
    "binary_auc": "binary AUC (benign vs malignant)",
    "hand_till_auc": "multi-class AUC (Hand & Till)",
    "macro_auc": "macro one-vs-rest AUC",
    "accuracy": "top-1 accuracy",
    "top3_accuracy": "top-3 accuracy",
    "ece": "expected calibration error",
}


def metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    """Markdown table of the checkpoint's patient-level metrics per split, with the 95 % CI
    (``ci``: DeLong for the binary AUC, bootstrap for Hand & Till, Wilson for accuracies) and n."""
    splits = [s for s in ("test", "val") if isinstance(metrics.get(s), Mapping)]
    if not splits:
        return ["None recorded in the checkpoint."]
    names = {"test": "test", "val": "validation (selected the checkpoint: optimistic)"}
    head = "| metric | " + " | ".join(names[s] for s in splits) + " |"
    lines = [head, "|---|" + "---|" * len(splits)]
    for key, label in CARD_METRICS.items():
        cells = []
        for s in splits:
            m = metrics[s]
            value = m.get(key)
            if not isinstance(value, int | float):
                cells.append("-")
                continue
            ci = (m.get("ci") or {}).get(key)
            cells.append(f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    counts = " | ".join(str(metrics[s].get("n_patients", "?")) for s in splits)
    lines.append(f"| patients (n) | {counts} |")
    return lines


def _manifest(
    info: ModelInfo, schema: Schema, settings: ServingSettings, params: PreprocessParams, taxonomy
) -> dict[str, Any]:
    return {
        "format": "dmfn-model-repository/1",
        "dmfn_version": dmfn.__version__,
        "schema": asdict(schema),
        "settings": asdict(settings),
        "ctc_features": list(info.ctc_features),
        "class_names": taxonomy.names,
        "preprocess_params_sha256": params.digest(),
        "taxonomy_sha256": taxonomy.digest(),
        "synthetic": info.synthetic,
        "parity": dict(info.parity),
        "input_limits": info.limits.to_dict() if info.limits is not None else None,
        "provenance": info.provenance.columns(),
        "temperature": info.temperature,
        "uncertainty": None if info.uncertainty is None else json.loads(info.uncertainty.to_json()),
        "management": {
            "source": info.management_policy.source,
            "sha256": info.management_policy.digest(),
        },
    }


def _fill(
    root: Path,
    template: Path,
    schema: Schema,
    settings: ServingSettings,
    net_file: Path,
    params: PreprocessParams,
    taxonomy: Taxonomy,
    info: ModelInfo,
) -> None:
    policy = info.management_policy
    policy.check_covers(taxonomy.names)
    contract = ServerContract(
        params.roi_margin_mm,
        tuple(info.ctc_features),
        tuple(taxonomy.names),
        info.limits,
        info.provenance,
        policy,
        info.uncertainty,
    )
    configs = render_all(schema, settings, contract, info.temperature)
    for name in MODEL_NAMES:
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(configs[name])
    for name in _PYTHON_MODELS:
        if name == S.NET_MODEL and settings.target != "cpu":
            continue  # onnxruntime_onnx / tensorrt_plan run the file themselves
        shutil.copy2(template / name / "1" / "model.py", root / name / "1" / "model.py")
    shutil.copy2(net_file, root / S.NET_MODEL / "1" / NET_MODEL_FILES[settings.target])
    (root / S.PREPROCESS_MODEL / PARAMS_FILE).write_text(params.to_json() + "\n")
    (root / S.POSTPROCESS_MODEL / TAXONOMY_FILE).write_text(taxonomy.to_csv_text())
    (root / S.POSTPROCESS_MODEL / MANAGEMENT_FILE).write_text(policy.to_json() + "\n")
    if info.uncertainty is not None:
        (root / S.POSTPROCESS_MODEL / UNCERTAINTY_FILE).write_text(
            info.uncertainty.to_json() + "\n"
        )
    for name in (S.NET_MODEL, S.POSTPROCESS_MODEL, S.PIPELINE_MODEL):
        (root / name / LABELS_FILE).write_text(taxonomy.labels_file_text())
    (root / MODEL_CARD_FILE).write_text(model_card_text(info, taxonomy, schema, settings.target))
    manifest = _manifest(info, schema, settings, params, taxonomy)
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def check_output_folder(out: str | Path, overwrite: bool) -> Path:
    """Where a repository may be written: ``out`` (through a symlink, its target), refused with
    :class:`InvalidInput` if it exists and is neither empty nor (with ``overwrite``) a model
    repository. Call it before any work, so a refusal costs nothing."""
    out = Path(out)
    if out.is_symlink():  # write where the link points, so the link stays valid and current
        out = out.resolve()
    if out.exists():
        if not out.is_dir():
            raise InvalidInput("out", f"{out} exists and is not a directory")
        looks_like_repo = any((out / m).is_dir() for m in MODEL_NAMES)
        if any(out.iterdir()) and not (overwrite and looks_like_repo):
            rule = (
                f"{out} is not empty and not a model repository; choose another folder"
                if not looks_like_repo
                else f"{out} holds a model repository; pass {{overwrite}} to replace it"
            )
            raise InvalidInput("out", rule, mentions={"overwrite": "overwrite=True"})
    return out


def write_repository(
    out: str | Path,
    *,
    net_file: str | Path,
    params: PreprocessParams,
    taxonomy: Taxonomy,
    info: ModelInfo,
    settings: ServingSettings | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a complete model repository to ``out`` and return its path.

    ``net_file`` is the ONNX file (targets cpu, onnxruntime) or TensorRT plan (target tensorrt).
    The schema follows from the taxonomy (classes), ``info.ctc_features`` and ``params.view_size``.
    An existing ``out`` is replaced only with ``overwrite=True`` and only if it is empty or a
    model repository (it has ``dmfn_pipeline/`` or ``preprocess/``).
    """
    settings = settings or ServingSettings()
    out = Path(out)
    net_file = Path(net_file)
    if not net_file.is_file():
        raise ValueError(f"argument 'net_file': {net_file} does not exist")
    if not info.ctc_features:
        raise ValueError("argument 'info': ctc_features must name at least one CTC feature")
    if info.limits is None:
        raise ValueError(
            "argument 'info': limits (the input ranges the server enforces) are required"
        )
    schema = Schema(
        n_ctc=len(info.ctc_features),
        n_classes=len(taxonomy),
        view_size=params.view_size,
        measurement_features=params.tabular_measurements,
    )
    out = check_output_folder(out, overwrite)
    template = template_dir()
    if out.resolve() == template.resolve():
        raise InvalidInput(
            "out",
            f"{out} holds the committed repository templates; write the exported repository "
            "elsewhere (default build/model_repository)",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _fill(tmp, template, schema, settings, net_file, params, taxonomy, info)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, out)
    return out


def _swap_in(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing an existing ``out``.

    The old ``out`` is parked at ``.<name>.old`` beside it while ``tmp`` moves in; if that move
    fails the old folder is renamed back to ``out``, so a failure never leaves ``out`` missing.
    ``tmp`` is removed on failure.
    """
    old = out.with_name(f".{out.name}.old")
    try:
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)
                raise
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        shutil.rmtree(old)
    except FileNotFoundError:
        pass
    except OSError as err:
        log.warning("could not remove the replaced repository %s: %s", old, err)


def render_committed(
    repo: str | Path, schema: Schema | None = None, settings: ServingSettings | None = None
) -> dict[Path, str]:
    """config.pbtxt path -> text of the committed default rendering (Schema(), target cpu, the
    default preprocessing parameters, CTC features and taxonomy)."""
    from dmfn.contract.taxonomy import load_taxonomy

    contract = ServerContract(
        PreprocessParams().roi_margin_mm,
        S.DEFAULT_CTC_FEATURES,
        tuple(load_taxonomy().names),
        TEMPLATE_LIMITS,
    )
    configs = render_all(schema or Schema(), settings or ServingSettings(), contract)
    return {Path(repo) / name / "config.pbtxt": text for name, text in configs.items()}


def check_repository(repo: str | Path) -> list[str]:
    """Problems that stop ``repo`` from serving dmfn_pipeline (empty list = looks complete)."""
    repo = Path(repo)
    if not repo.is_dir():
        return [f"{repo} is not a directory"]
    problems = []
    for name in MODEL_NAMES:
        if not (repo / name / "config.pbtxt").is_file():
            problems.append(f"{name}/config.pbtxt is missing")
    for name in (S.PREPROCESS_MODEL, S.POSTPROCESS_MODEL):
        if not (repo / name / "1" / "model.py").is_file():
            problems.append(f"{name}/1/model.py is missing")
    params_path = repo / S.PREPROCESS_MODEL / PARAMS_FILE
    if not params_path.is_file():
        problems.append(f"{S.PREPROCESS_MODEL}/{PARAMS_FILE} is missing (run `dmfn export`)")
    else:
        try:  # refused here, not by the preprocess model inside a starting Triton
            PreprocessParams.from_json(params_path.read_text())
        except (OSError, ValueError) as err:
            problems.append(f"{S.PREPROCESS_MODEL}/{PARAMS_FILE}: {err}")
    if not (repo / S.POSTPROCESS_MODEL / TAXONOMY_FILE).is_file():
        problems.append(f"{S.POSTPROCESS_MODEL}/{TAXONOMY_FILE} is missing (run `dmfn export`)")
    net_dir = repo / S.NET_MODEL / "1"
    if not any((net_dir / f).is_file() for f in set(NET_MODEL_FILES.values())):
        problems.append(f"{S.NET_MODEL}/1/ has no model.onnx or model.plan (run `dmfn export`)")
    return problems


def repository_limits(repository: str | Path) -> InputLimits:
    """The input limits recorded in ``repository``'s manifest (written by ``dmfn export``)."""
    path = Path(repository) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())["input_limits"]
        if data is None:
            raise KeyError("input_limits")
        return InputLimits.from_dict(data)
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ValueError(
            f"argument 'repository': {path} does not record the model's input limits "
            f"({type(err).__name__}: {err}); export the model again with `dmfn export`"
        ) from None


def repository_provenance(repository: str | Path) -> dict[str, str] | None:
    """The served checkpoint's provenance recorded by ``dmfn export`` (sha256, training date,
    synthetic), or None for a repository written before it was recorded."""
    try:
        value = json.loads((Path(repository) / MANIFEST_FILE).read_text()).get("provenance")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
