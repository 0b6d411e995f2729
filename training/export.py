"""``dmfn export``: checkpoint -> ONNX (+ TensorRT engine) -> complete Triton model repository.

Steps, each of which must pass before anything is written to ``--out``:

1. rebuild the network from the checkpoint and export it to ONNX (opset >= 17, dynamic batch axis,
   tensor names VIEWS / TABULAR / LOGITS from :mod:`dmfn.contract.schema`, weights inside the file);
2. preprocess studies exactly as the server does (their wire requests through
   :func:`dmfn.preprocess.preprocess_request`, with the checkpoint's parameters; the user's own
   studies from ``--parity-manifest``, otherwise small synthetic crops of :mod:`dmfn.synth.crops`)
   and check that ONNX Runtime reproduces PyTorch's logits (max abs difference <= ``--tolerance``,
   default 1e-4) at batch 1 and at the full batch;
3. target ``tensorrt`` only: build an FP16 engine with the TensorRT Python API and an optimisation
   profile (batch 1 / 8 / max), and check it against ONNX Runtime (``--trt-tolerance``); without
   TensorRT or a GPU the export stops with a clear message (no fake engine);
4. write the repository (:func:`dmfn.serving.repository.write_repository`): rendered configs,
   model.py files, the net file, preprocessing parameters, taxonomy / labels, model card.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dmfn.contract import schema as S
from dmfn.contract.errors import in_flags
from dmfn.contract.limits import DEFAULT_MAX_STUDY_VOXELS, InputLimits, widen_range
from dmfn.contract.management import load_management
from dmfn.contract.study import Study
from dmfn.contract.wire import build_request
from dmfn.preprocess import preprocess_request
from dmfn.preprocess.gpu import cupy_unavailable_reason, to_host
from dmfn.serving.config import SETTING_FLAGS, ServingSettings
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
    names = {"input_names": [S.VIEWS, S.TABULAR], "output_names": [S.LOGITS]}
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
                **names,
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
                **names,
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


# --- the command -----------------------------------------------------------------------------


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
    return InputLimits(ctc_ranges=ranges, max_study_voxels=cap)  # type: ignore[arg-type]


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
) -> dict[str, float]:
    """Export ``checkpoint`` into a Triton repository at ``out``; returns the parity numbers.
    ``management``: the management policy JSON the server applies (None: dmfn's default).

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


#: API argument -> flag of `dmfn export` (error messages speak in flags).
FLAGS: dict[str, str] = {
    "out": "--out",
    "overwrite": "--overwrite",
    "checkpoint": "--checkpoint",
    "ctc_range": "--ctc-range",
    "max_study_voxels": "--max-study-voxels",
    "parity_manifest": "--parity-manifest",
    "management": "--management",
    "parity_studies": "--parity-studies",
    "manifest": "--parity-manifest",
    **{name: flag for name, (flag, _) in SETTING_FLAGS.items()},
}


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be LOW:HIGH, got {text!r}") from None
    if not lo <= hi:
        raise argparse.ArgumentTypeError(f"LOW must be <= HIGH, got {text!r}")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dmfn export",
        description=(
            "Export a trained checkpoint to ONNX (and a TensorRT FP16 engine for --target tensorrt), "
            "check it against PyTorch on preprocessed studies and write a complete Triton model "
            "repository (configs, model files, preprocessing parameters, labels, model card). "
            "Nothing is written if a check fails."
        ),
    )
    p.add_argument(
        "--checkpoint", required=True, type=Path, help="checkpoint .pt written by `dmfn train`"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("build/model_repository"),
        help="repository folder to write (build/model_repository; the committed model_repository/ "
        "holds the templates and is never an output)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing model repository at --out"
    )
    g = p.add_argument_group("checks")
    g.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="max abs logit difference ONNX Runtime vs PyTorch (1e-4)",
    )
    g.add_argument(
        "--trt-tolerance",
        type=float,
        default=DEFAULT_TRT_TOLERANCE,
        help="max abs logit difference TensorRT FP16 vs ONNX Runtime (5e-2)",
    )
    g.add_argument(
        "--parity-studies",
        type=int,
        default=8,
        help="number of studies preprocessed for the checks (8)",
    )
    g.add_argument(
        "--parity-manifest",
        type=Path,
        default=None,
        help="cohort manifest CSV whose first studies are used for the checks (default: synthetic studies made on the fly)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the synthetic check studies (0)")
    g.add_argument(
        "--opset",
        type=int,
        default=MIN_OPSET,
        help=f"ONNX opset (>= {MIN_OPSET}; default {MIN_OPSET})",
    )
    g.add_argument(
        "--dynamo",
        action="store_true",
        help="use the torch.export-based ONNX exporter (slower) instead of the TorchScript one",
    )
    ServingSettings.add_arguments(p.add_argument_group("serving settings (config.pbtxt)"))
    lim = p.add_argument_group("accepted inputs (refused with HTTP 400 outside them)")
    lim.add_argument(
        "--ctc-range",
        type=_range,
        action="append",
        default=None,
        metavar="LOW:HIGH",
        help="accepted range of a CTC feature, once per feature in order (default: the range seen "
        "in training, widened by half its width on each side, not below 0)",
    )
    lim.add_argument(
        "--max-study-voxels",
        type=int,
        default=DEFAULT_MAX_STUDY_VOXELS,
        help="largest ROI crop one study may send, in voxels; also sizes the front door's request "
        f"body limit ({DEFAULT_MAX_STUDY_VOXELS})",
    )
    p.add_argument(
        "--management",
        type=Path,
        default=None,
        help="management policy JSON the server applies (class -> option, min_probability); "
        "default: dmfn's, contract/data/management_default.json, which is not from the paper",
    )
    p.add_argument(
        "--training-data",
        choices=("auto", "synthetic", "real"),
        default="auto",
        help="what the model card says about the training data; auto = the checkpoint's record, synthetic when unknown",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dmfn export``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = ServingSettings.from_arguments(args)
        parity = export(
            args.checkpoint,
            args.out,
            settings,
            tolerance=args.tolerance,
            trt_tolerance=args.trt_tolerance,
            opset=args.opset,
            dynamo=args.dynamo,
            parity_studies=args.parity_studies,
            parity_manifest=args.parity_manifest,
            training_data=args.training_data,
            management=args.management,
            overwrite=args.overwrite,
            seed=args.seed,
            ctc_range=args.ctc_range,
            max_study_voxels=args.max_study_voxels,
        )
    except (ValueError, ExportError) as err:
        print(f"dmfn export: {in_flags(err, FLAGS)}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    checks = ", ".join(f"{k} = {v:.3g}" for k, v in parity.items())
    print(f"wrote {args.out} (target {args.target}); checks: {checks}")
    print(f"serve it with: dmfn serve --repository {args.out}")
    return 0
