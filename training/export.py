"""Checkpoint -> ONNX (+ TensorRT engine) -> complete Triton model repository: :func:`export`,
the API of ``dmfn export`` (its command line: :mod:`dmfn.training.export_cli`).

Steps, each of which must pass before anything is written to ``out``:

1. rebuild the network from the checkpoint and export it to ONNX (opset >= 17, dynamic batch axis,
   tensor names VIEWS / TABULAR / LOGITS from :mod:`dmfn.contract.schema`, weights inside the file);
2. preprocess studies exactly as the server does (their wire requests through
   :func:`dmfn.preprocess.preprocess_request`, with the checkpoint's parameters; the user's own
   studies from ``parity_manifest``, otherwise small synthetic crops of :mod:`dmfn.synth.crops`)
   and check that ONNX Runtime reproduces PyTorch's logits (max abs difference <= ``tolerance``,
   default 1e-4) at batch 1 and at the full batch;
3. target ``tensorrt`` only: build an FP16 engine with the TensorRT Python API and an optimisation
   profile (batch 1 / 8 / max), and check it against ONNX Runtime (``trt_tolerance``); without
   TensorRT or a GPU the export stops with a clear message (no fake engine);
4. write the repository (:func:`dmfn.serving.repository.write_repository`): rendered configs,
   model.py files, the net file, preprocessing parameters, taxonomy / labels, model card.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dmfn.contract import schema as S
from dmfn.contract.limits import DEFAULT_MAX_STUDY_VOXELS, InputLimits, widen_range
from dmfn.contract.management import load_management
from dmfn.contract.study import Study
from dmfn.contract.uncertainty import DEFAULT_COVERAGE, DEFAULT_FALSE_ALARM, Uncertainty
from dmfn.contract.wire import build_request
from dmfn.preprocess import preprocess_request
from dmfn.preprocess.gpu import cupy_unavailable_reason, to_host
from dmfn.serving.config import ServingSettings
from dmfn.serving.repository import ModelInfo, check_output_folder, write_repository
from dmfn.synth.crops import synthetic_crops

from .checkpoint import Checkpoint, load_checkpoint, provenance

log = logging.getLogger(__name__)

MIN_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
#: FP16 engine vs FP32 ONNX Runtime: max abs logit difference accepted.
DEFAULT_TRT_TOLERANCE = 5e-2
TRT_OPT_BATCH = 8


class ExportError(RuntimeError):
    """The export failed a check; nothing was written."""


# --- studies for the parity check ------------------------------------------------------------


def studies_batch(
    studies: Sequence[Study], ckpt: Checkpoint, backend: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """VIEWS fp32[N, 3, S, S] and TABULAR fp32[N, K+5] of ``studies`` exactly as the server
    computes them: the wire request of each (:func:`dmfn.contract.wire.build_request`) through
    :func:`dmfn.preprocess.preprocess_request` (on the GPU for ``backend="cupy"``; host arrays
    either way)."""
    contract = ckpt.contract()
    out = [
        preprocess_request(build_request(s, contract), ckpt.preprocess_params, backend=backend)[0]
        for s in studies
    ]
    views = np.stack([np.asarray(to_host(p.views), np.float32) for p in out])
    return views, np.stack([np.asarray(p.tabular, np.float32) for p in out])


def manifest_studies(manifest: Path, ckpt: Checkpoint, n: int) -> list[Study]:
    """The first ``n`` images of a cohort manifest, loaded as the client loads them."""
    from dmfn.client.manifest import load_row_study, read_manifest

    rows = read_manifest(manifest, ckpt.taxonomy, ckpt.ctc_features).rows[:n]
    return [load_row_study(row, ckpt.ctc_features) for row in rows]


# --- ONNX ------------------------------------------------------------------------------------


def export_onnx(
    model: torch.nn.Module,
    example: tuple[np.ndarray, np.ndarray],
    path: Path,
    opset: int = MIN_OPSET,
    dynamo: bool = False,
) -> Path:
    """Export ``model`` (forward(views, tabular) -> logits) to one self-contained ONNX file.

    Input names VIEWS, TABULAR, output LOGITS, batch axis dynamic. ``dynamo=False`` uses the
    TorchScript exporter (fast; its deprecation warning is silenced here), ``True`` torch.export.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"argument 'opset': must be >= {MIN_OPSET}, got {opset}")
    args = tuple(torch.from_numpy(a) for a in example)
    input_names, output_names = [S.VIEWS, S.TABULAR], [S.LOGITS]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*axis name.*", category=UserWarning)
        # The models' static shape checks are constants for a fixed input rank: expected.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(
                model,
                args,
                str(path),
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes={"views": {0: batch}, "tabular": {0: batch}},
                verbose=False,
            )
        else:
            torch.onnx.export(
                model,
                args,
                str(path),
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                dynamo=False,
                dynamic_axes={n: {0: "batch"} for n in (S.VIEWS, S.TABULAR, S.LOGITS)},
            )
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    return path


def onnxruntime_logits(onnx_path: Path, views: np.ndarray, tabular: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([S.LOGITS], {S.VIEWS: views, S.TABULAR: tabular})
    return logits


def torch_logits(model: torch.nn.Module, views: np.ndarray, tabular: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(views), torch.from_numpy(tabular)).numpy()


def check_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    views: np.ndarray,
    tabular: np.ndarray,
    tolerance: float,
) -> float:
    """Max abs logit difference ONNX Runtime vs PyTorch, at batch 1 and at the full batch.

    Raises :class:`ExportError` above ``tolerance``.
    """
    reference = torch_logits(model, views, tabular)
    worst = float(np.abs(onnxruntime_logits(onnx_path, views, tabular) - reference).max())
    one = onnxruntime_logits(onnx_path, views[:1], tabular[:1])
    worst = max(worst, float(np.abs(one - reference[:1]).max()))
    if not np.isfinite(worst) or worst > tolerance:
        raise ExportError(
            f"ONNX Runtime differs from PyTorch by {worst:.3g} (max abs logit) on "
            f"{len(views)} preprocessed studies, above the tolerance {tolerance:g}; "
            "no repository was written"
        )
    return worst


# --- TensorRT --------------------------------------------------------------------------------


def tensorrt_unavailable_reason() -> str | None:
    """None if TensorRT and a CUDA GPU are usable here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return (
            "the TensorRT Python package is not installed (pip install tensorrt, or run the export "
            "inside NGC's TensorRT/Triton container on a GPU host)"
        )
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch; a TensorRT engine must be built on the GPU it runs on"
    return None


def build_tensorrt_engine(
    onnx_path: Path, plan_path: Path, view_size: int, n_tabular: int, max_batch: int
) -> Path:
    """FP16 engine from ``onnx_path`` with one profile: batch 1 (min) / 8 (opt) / ``max_batch``."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    opt = min(TRT_OPT_BATCH, max_batch)
    for name, tail in ((S.VIEWS, (3, view_size, view_size)), (S.TABULAR, (n_tabular,))):
        profile.set_shape(name, (1, *tail), (opt, *tail), (max_batch, *tail))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ExportError("TensorRT failed to build the engine (see the TensorRT log above)")
    plan_path.write_bytes(bytes(engine))
    return plan_path


def tensorrt_logits(plan_path: Path, views: np.ndarray, tabular: np.ndarray) -> np.ndarray:
    """Run the engine on the GPU (I/O buffers are CUDA tensors from PyTorch)."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    context = engine.create_execution_context()
    inputs = {S.VIEWS: views, S.TABULAR: tabular}
    buffers = {n: torch.from_numpy(a).cuda().contiguous() for n, a in inputs.items()}
    for name, tensor in buffers.items():
        context.set_input_shape(name, tuple(tensor.shape))
    out = torch.empty(tuple(context.get_tensor_shape(S.LOGITS)), device="cuda")
    buffers[S.LOGITS] = out
    for name, tensor in buffers.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise ExportError("TensorRT execution failed")
    stream.synchronize()
    return out.cpu().numpy()


# --- the export ------------------------------------------------------------------------------


def _schema_checks(ckpt: Checkpoint) -> None:
    config = ckpt.model_config
    extra = len(S.TABULAR_MEASUREMENT_FIELDS) if ckpt.preprocess_params.tabular_measurements else 0
    n_tabular = len(ckpt.ctc_features) + len(S.CLINICAL_FIELDS) + extra
    if config.get("n_classes") not in (None, len(ckpt.taxonomy)):
        raise ValueError(
            f"argument 'checkpoint': model has {config['n_classes']} classes but its taxonomy "
            f"has {len(ckpt.taxonomy)}"
        )
    if config.get("n_tabular") not in (None, n_tabular):
        raise ValueError(
            f"argument 'checkpoint': model expects {config['n_tabular']} tabular columns but "
            f"{len(ckpt.ctc_features)} CTC features + {len(S.CLINICAL_FIELDS)} clinical + {extra} "
            f"measurement features = {n_tabular}"
        )


def input_limits(
    ckpt: Checkpoint,
    ctc_range: Sequence[tuple[float, float]] | None = None,
    max_study_voxels: int = DEFAULT_MAX_STUDY_VOXELS,
) -> InputLimits:
    """The input limits the served model enforces.

    CTC: ``ctc_range`` (one (low, high) per CTC feature, used as given) or else the checkpoint's
    training range widened by :func:`dmfn.contract.limits.widen_range`. Other limits: defaults.
    """
    if ctc_range is not None:
        ranges = tuple(tuple(r) for r in ctc_range)
    elif ckpt.ctc_observed_range is not None:
        ranges = tuple(widen_range(lo, hi) for lo, hi in ckpt.ctc_observed_range)
    else:
        raise ValueError(
            "argument 'ctc_range' (--ctc-range): the checkpoint does not record the CTC range "
            "seen in training (it predates that record); give the accepted range of each CTC "
            f"feature ({', '.join(ckpt.ctc_features)}) as --ctc-range LOW:HIGH"
        )
    if len(ranges) != len(ckpt.ctc_features):
        raise ValueError(
            f"argument 'ctc_range' (--ctc-range): {len(ranges)} range(s) for "
            f"{len(ckpt.ctc_features)} CTC feature(s) ({', '.join(ckpt.ctc_features)})"
        )
    # A crop the preprocessing would refuse anyway is refused at the door.
    cap = min(max_study_voxels, ckpt.preprocess_params.max_voxels)
    return InputLimits(ctc_ranges=ranges, max_study_voxels=cap)


#: Largest VIEWS difference (window units, [0, 1]) allowed between the CuPy and C++ preprocessing.
GPU_VIEWS_TOLERANCE = 1e-4


def _check_gpu_preprocessing(
    studies: Sequence[Study], ckpt: Checkpoint, views: np.ndarray
) -> dict[str, float]:
    """For ``--device gpu``: the parity studies' VIEWS from the CuPy kernels against the C++
    kernels, where this machine has a GPU; elsewhere a warning that it is unchecked here."""
    reason = cupy_unavailable_reason()
    if reason is not None:
        log.warning(
            "--device gpu: preprocess will run the CuPy kernels on the server's GPU; "
            "not checked on this machine (%s). scripts/gpu_check.sh checks it on a GPU host.",
            reason,
        )
        return {}
    gpu_views, _ = studies_batch(studies, ckpt, backend="cupy")
    diff = float(np.abs(gpu_views - views).max())
    if not np.isfinite(diff) or diff > GPU_VIEWS_TOLERANCE:
        raise ExportError(
            f"GPU preprocessing differs from the C++ kernels by {diff:.3g} (max abs view value), "
            f"above {GPU_VIEWS_TOLERANCE:g}; no repository was written"
        )
    log.info("CuPy vs C++ preprocessing: max abs view difference %.3g", diff)
    return {"preprocess_cupy_vs_cpp_max_abs_view": diff}


def _is_synthetic(ckpt: Checkpoint, training_data: str) -> bool:
    if training_data != "auto":
        return training_data == "synthetic"
    # Unknown provenance is treated as synthetic: the card then warns rather than over-claims.
    return bool(ckpt.training.get("synthetic", True))


def _uncertainty(
    ckpt: Checkpoint, coverage: float, conformal: str, false_alarm: float
) -> Uncertainty:
    """The class-set and OOD fits of ``ckpt`` (ExportError when it carries no calibration
    data: a checkpoint from before they existed)."""
    fit = ckpt.uncertainty(coverage, conformal, false_alarm)
    if fit is None:
        raise ExportError(
            "the checkpoint carries no calibration data (validation probabilities, training OOD "
            "scores) for the class sets and the OOD flag: retrain it, or add them with "
            "scripts/add_calibration.py CHECKPOINT MANIFEST"
        )
    return fit


def export(
    checkpoint: str | Path,
    out: str | Path,
    settings: ServingSettings,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    trt_tolerance: float = DEFAULT_TRT_TOLERANCE,
    opset: int = MIN_OPSET,
    dynamo: bool = False,
    parity_studies: int = 8,
    parity_manifest: str | Path | None = None,
    training_data: str = "auto",
    overwrite: bool = False,
    seed: int = 0,
    ctc_range: Sequence[tuple[float, float]] | None = None,
    max_study_voxels: int = DEFAULT_MAX_STUDY_VOXELS,
    management: str | Path | None = None,
    coverage: float = DEFAULT_COVERAGE,
    conformal: str = "aps",
    ood_false_alarm: float = DEFAULT_FALSE_ALARM,
) -> dict[str, float]:
    """Export ``checkpoint`` into a Triton repository at ``out``; returns the parity numbers.
    ``management``: the management policy JSON the server applies (None: dmfn's default).
    The class sets (``conformal`` method at ``coverage``, fitted on the checkpoint's validation
    probabilities) and the OOD threshold (``ood_false_alarm`` on its training split) are fitted
    here and stored with the model (:mod:`dmfn.contract.uncertainty`).

    Raises ValueError for bad arguments and :class:`ExportError` when a check fails (then
    nothing is written).
    """
    if parity_studies < 2:
        raise ValueError(f"argument 'parity_studies': must be >= 2, got {parity_studies}")
    if settings.target == "tensorrt":
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise ExportError(f"cannot build a TensorRT engine here: {reason}")
    check_output_folder(out, overwrite)  # before any work: a refusal costs nothing
    policy = load_management(management)
    ckpt = load_checkpoint(checkpoint)
    policy.check_covers(ckpt.taxonomy.names)
    _schema_checks(ckpt)
    uncertainty = _uncertainty(ckpt, coverage, conformal, ood_false_alarm)
    limits = input_limits(ckpt, ctc_range, max_study_voxels)
    model = ckpt.build_model()
    params = ckpt.preprocess_params
    if parity_manifest is not None:
        studies = manifest_studies(Path(parity_manifest), ckpt, parity_studies)
    else:
        studies = synthetic_crops(parity_studies, seed, ctc_features=ckpt.ctc_features)
    views, tabular = studies_batch(studies, ckpt)
    gpu_parity = _check_gpu_preprocessing(studies, ckpt, views) if settings.device == "gpu" else {}
    with tempfile.TemporaryDirectory(prefix="dmfn-export-") as tmp:
        onnx_path = export_onnx(
            model, (views[:2], tabular[:2]), Path(tmp) / "model.onnx", opset, dynamo
        )
        parity = {
            "onnxruntime_vs_torch_max_abs_logit": check_parity(
                model, onnx_path, views, tabular, tolerance
            ),
            **gpu_parity,
        }
        log.info(
            "ONNX Runtime vs PyTorch: max abs logit difference %.3g",
            parity["onnxruntime_vs_torch_max_abs_logit"],
        )
        net_file = onnx_path
        if settings.target == "tensorrt":
            net_file = build_tensorrt_engine(
                onnx_path,
                Path(tmp) / "model.plan",
                params.view_size,
                tabular.shape[1],
                settings.net_max_batch_size,
            )
            diff = float(
                np.abs(
                    tensorrt_logits(net_file, views, tabular)
                    - onnxruntime_logits(onnx_path, views, tabular)
                ).max()
            )
            if not np.isfinite(diff) or diff > trt_tolerance:
                raise ExportError(
                    f"TensorRT FP16 engine differs from ONNX Runtime by {diff:.3g} (max abs logit), "
                    f"above --trt-tolerance {trt_tolerance:g}; no repository was written"
                )
            parity["tensorrt_fp16_vs_onnxruntime_max_abs_logit"] = diff
        info = ModelInfo(
            ctc_features=ckpt.ctc_features,
            metrics=ckpt.metrics,
            training=ckpt.training,
            versions=ckpt.versions,
            model_config=ckpt.model_config,
            synthetic=_is_synthetic(ckpt, training_data),
            checkpoint=str(checkpoint),
            parity=parity,
            limits=limits,
            provenance=provenance(ckpt, checkpoint),
            temperature=ckpt.temperature,
            management=policy,
            uncertainty=uncertainty,
        )
        write_repository(
            out,
            net_file=net_file,
            params=params,
            taxonomy=ckpt.taxonomy,
            info=info,
            settings=settings,
            overwrite=overwrite,
        )
    return parity
