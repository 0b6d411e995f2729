"""Locust users for the dmfn service: realistic studies through the client SDK, over HTTP or gRPC,
with a configurable share of malformed requests.

Run through ``loadtests/run.sh`` (it starts a server, warms it up, records memory and writes
``summary.json``), or directly::

    locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 60s --host 127.0.0.1:8000 \
        --protocol http --malformed 0.05

Each good request is reported to Locust as type ``http``/``grpc``, name ``predict``. A malformed
request (name ``malformed``) counts as a success when the server refuses it as invalid (HTTP 400
/ gRPC INVALID_ARGUMENT), and as a failure otherwise: accepted, or refused the wrong way.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from pathlib import Path

from locust import User, constant, events, task

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from studies import make_studies

from dmfn.client.sdk import DmfnClient, DmfnServerError, build_request, infer_inputs
from dmfn.contract import schema as S

N_STUDIES = 16
_STUDIES: list = []


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--malformed", type=float, default=0.0, help="share of malformed requests")
    parser.add_argument("--studies-seed", type=int, default=0)
    # TLS and mutual TLS (paths); the API key comes from $DMFN_API_KEY, read by the SDK
    parser.add_argument("--ca-cert", default=None)
    parser.add_argument("--client-cert", default=None)
    parser.add_argument("--client-key", default=None)
    parser.add_argument(
        "--malformed-kinds",
        default=",".join(MALFORMED),
        help="comma-separated kinds of malformed request to send (default: all)",
    )


@events.init.add_listener
def _grpc_under_gevent(environment, **kwargs) -> None:
    if environment.parsed_options and environment.parsed_options.protocol == "grpc":
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()


def _bytes(data: bytes) -> np.ndarray:
    out = np.empty((1, 1), np.object_)
    out[0, 0] = data
    return out


#: name -> how to break a valid request (each must be refused as invalid by the server).
MALFORMED = {
    "ctc_units": lambda a: {**a, S.CTC: np.full_like(a[S.CTC], 1300.0)},
    "nan_spacing": lambda a: {**a, S.SPACING_MM: np.full_like(a[S.SPACING_MM], np.nan)},
    "tiny_spacing": lambda a: {**a, S.SPACING_MM: np.full_like(a[S.SPACING_MM], 1e-30)},
    "short_volume": lambda a: {**a, S.CT_HU: _bytes(a[S.CT_HU][0, 0][:-2])},
    "overflow_shape": lambda a: {**a, S.VOLUME_SHAPE: np.array([[2**31 - 1] * 3], np.int32)},
    "empty_mask": lambda a: {**a, S.ROI_MASK: _bytes(bytes(len(a[S.ROI_MASK][0, 0])))},
    "age_150": lambda a: {
        **a,
        S.CLINICAL: np.concatenate([[[150.0]], a[S.CLINICAL][:, 1:]], axis=1).astype(np.float32),
    },
}


class DmfnUser(User):
    """One client sending one study at a time, with no pause (a closed loop)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.protocol = options.protocol
        self.malformed = options.malformed
        self.client = DmfnClient(
            self.host,
            self.protocol,
            timeout_s=120,
            ca_cert=options.ca_cert,
            client_cert=options.client_cert,
            client_key=options.client_key,
        )
        contract = self.client.contract
        if not _STUDIES:
            ranges = contract.limits.ctc_ranges[0] if contract.limits else (0.0, 40.0)
            _STUDIES.extend(make_studies(N_STUDIES, options.studies_seed, ranges))
        # Malformed requests skip the SDK's own checks, so that the server sees them.
        self.unchecked = dataclasses.replace(contract, limits=None)
        kinds = [k for k in options.malformed_kinds.split(",") if k]
        unknown = sorted(set(kinds) - set(MALFORMED))
        if unknown:
            raise ValueError(f"--malformed-kinds: unknown {unknown}; known: {sorted(MALFORMED)}")
        self.kinds = [(k, MALFORMED[k]) for k in kinds]
        self.module = self.client._module

    def on_stop(self) -> None:
        self.client.close()

    def _fire(self, name: str, started: float, exception: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type=self.protocol,
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=0,
            exception=exception,
            context={},
        )

    @task
    def send(self) -> None:
        study = random.choice(_STUDIES)
        if random.random() < self.malformed:
            self._send_malformed(study)
            return
        started = time.perf_counter()
        try:
            self.client.predict(study)
        except Exception as err:
            self._fire("predict", started, err)
        else:
            self._fire("predict", started, None)

    def _send_malformed(self, study) -> None:
        kind, breaker = random.choice(self.kinds)
        inputs = infer_inputs(self.module, breaker(build_request(study, self.unchecked)))
        started = time.perf_counter()
        outcome: Exception | None
        try:
            self.client._call(
                "inference",
                self.client._client().infer,
                self.client.model,
                inputs,
                **self.client._timeout_kwargs(),
            )
            outcome = AssertionError(f"malformed request {kind!r} was accepted")
        except DmfnServerError as err:
            refused = err.status in ("400", "StatusCode.INVALID_ARGUMENT")
            outcome = None if refused else err
        self._fire("malformed", started, outcome)
