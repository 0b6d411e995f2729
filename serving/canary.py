"""The canary: a small valid study sent through the pipeline to prove it answers."""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from dmfn.client.sdk import infer_inputs
from dmfn.contract import schema as S
from dmfn.contract.schema import clinical_vector
from dmfn.contract.server import ServerContract
from dmfn.contract.wire import encode_study

from .triton import TritonServer

log = logging.getLogger("dmfn.serve")


def canary_arrays(contract: ServerContract) -> dict[str, np.ndarray]:
    """A small valid study for health checks: 12 x 24 x 24 voxels of 1 mm, soft tissue with a
    cubic lesion, CTC in the middle of the accepted range, a 50-year-old man, anterior."""
    hu = np.full((12, 24, 24), 40, np.int16)
    mask = np.zeros(hu.shape, np.uint8)
    mask[4:8, 8:16, 8:16] = 1
    hu[mask == 1] = 70
    if contract.limits is not None:
        ctc = [(lo + hi) / 2 for lo, hi in contract.limits.ctc_ranges]
    else:
        ctc = [10.0] * len(contract.ctc_features)
    clinical = clinical_vector(50.0, "M", "anterior")
    return encode_study(hu, mask, (1.0, 1.0, 1.0), ctc, clinical)


def send_canary(triton: TritonServer, contract: ServerContract, timeout_s: float = 60.0) -> bool:
    """One canary through the pipeline on ``triton``'s gRPC socket, waiting at most
    ``timeout_s`` seconds; True if it answered with finite probabilities."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        inputs = infer_inputs(grpcclient, canary_arrays(contract))
        result = client.infer(S.PIPELINE_MODEL, inputs, client_timeout=timeout_s)
        probs = result.as_numpy(S.PROBS)
        return probs is not None and bool(np.isfinite(probs).all())
    except Exception as err:  # any failure means "not answering"
        log.info("canary request failed: %s", err)  # the not_ready event reports it
        return False
    finally:
        with contextlib.suppress(Exception):
            client.close()
