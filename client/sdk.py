"""The Python client SDK of the dmfn Triton service (no torch).

``DmfnClient`` sends :class:`~dmfn.contract.study.Study` objects to the ``dmfn_pipeline`` ensemble
over HTTP or gRPC and returns :class:`Prediction` objects::

    from dmfn.client.sdk import DmfnClient
    with DmfnClient("127.0.0.1:8000") as client:
        prediction = client.predict(study)
        print(prediction.top3, prediction.malignant_prob, prediction.management)

What leaves the client (docs/architecture.md, data flow): only the voxels of the lesion box plus the ROI
margin the model was trained with (cropped here with :func:`dmfn.contract.roi.roi_box`, the box
the server's crop uses too), as int16
HU, the spacing, the cropped mask, the CTC features and the clinical vector. No DICOM header,
no patient or image identifier, no position in the patient is sent.

The model's contract (ROI margin, CTC feature names, class names) is read once from the
ensemble's config (see :mod:`dmfn.contract.server`) unless given explicitly.

Threads: tritonclient's HTTP client is gevent-based and must not be shared across threads, so a
``DmfnClient`` keeps one tritonclient client per thread; a ``DmfnClient`` itself may be shared.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from dmfn.client.credentials import Credentials
from dmfn.contract import schema as S
from dmfn.contract.audit import AuditLog, client_audit, local_caller, one_line, study_identifiers
from dmfn.contract.management import ManagementPolicy
from dmfn.contract.predictions import Provenance
from dmfn.contract.server import ServerContract
from dmfn.contract.study import Study
from dmfn.contract.wire import build_request, crop_study

log = logging.getLogger(__name__)

PROTOCOLS: tuple[str, ...] = ("http", "grpc")
DEFAULT_URLS: dict[str, str] = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}
DEFAULT_TIMEOUT_S = 60.0


class DmfnServerError(RuntimeError):
    """The server refused or failed a request, or could not be reached.

    ``message`` is the server's text (for a bad input it names the tensor and the rule);
    ``status`` the HTTP status or gRPC code when known.
    """

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message if status is None else f"{message} (status {status})")
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Prediction:
    """The served model's answer for one study.

    Attributes:
        probs: class name -> probability (logit order, sums to 1).
        top3: the three most probable classes, ``(name, probability)``, most probable first.
        malignant_prob: sum of the probabilities of the taxonomy's malignant classes.
        management: the management policy's suggestion (an option whose classes' summed
            probability reaches the policy's threshold, else ``uncertain``;
            :mod:`dmfn.contract.management`). The policy is the hospital's, not the paper's.
        management_detail: the same in words with the options' probabilities, e.g.
            ``uncertain (surgery 0.55, follow-up 0.40; none reaches 0.60)``; where the server
            does not publish its policy, equal to ``management``.
        measurements: ``schema.MEASUREMENT_FIELDS`` name -> value (mm, mm^2, mm^3), measured by
            the server on the mask after isotropic resampling.
        model_version: ``"<model name>/<version>"`` that answered.
        image_id: the study's ``image_id`` (kept on the client, never sent).
        provenance: the served checkpoint (sha256, training date, synthetic or not), as the
            server publishes it.
        class_set: the conformal class set, most probable first: the true class is in sets
            made this way for ``coverage`` of studies like the validation studies (marginal
            coverage; :mod:`dmfn.contract.conformal`); empty when the model has no fit.
        binary_set: ``("malignant",)``, ``("benign",)`` or both (undecided at that coverage).
        coverage: the sets' stated coverage (None: not published).
        ood_score, ood_flag: how unusual the study is for the model (:mod:`dmfn.contract.ood`,
            higher = more unusual) and whether it is above the threshold fitted on the training
            split (an answer to read with caution).
    """

    probs: Mapping[str, float]
    top3: tuple[tuple[str, float], ...]
    malignant_prob: float
    management: str
    measurements: Mapping[str, float]
    model_version: str
    image_id: str = ""
    provenance: Provenance = field(default_factory=Provenance)
    management_detail: str = ""
    class_set: tuple[str, ...] = ()
    binary_set: tuple[str, ...] = ()
    coverage: float | None = None
    ood_score: float = float("nan")
    ood_flag: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return {
            "image_id": self.image_id,
            "model_version": self.model_version,
            "top3": [{"label": label, "prob": prob} for label, prob in self.top3],
            "malignant_prob": self.malignant_prob,
            "management": self.management,
            "management_detail": self.management_detail or self.management,
            "measurements": dict(self.measurements),
            "probs": dict(self.probs),
            "class_set": list(self.class_set),
            "binary_set": list(self.binary_set),
            "coverage": self.coverage,
            "ood_score": self.ood_score,
            "ood_flag": self.ood_flag,
            **self.provenance.columns(),
        }


# --------------------------------------------------------------------------- request / response
def infer_inputs(
    module: Any, arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, str] | None = None
) -> list[Any]:
    """``module.InferInput`` objects (``module`` = tritonclient.http or tritonclient.grpc) holding
    ``arrays``, with each tensor's wire dtype from the schema (``dtypes`` overrides some, e.g. to
    send the internal models' tensors or a deliberately wrong type)."""
    spec = {t.name: t.dtype for t in S.Schema().request_inputs}
    spec.update(dtypes or {})
    inputs = []
    for name, array in arrays.items():
        item = module.InferInput(name, list(array.shape), spec[name])
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


def parse_response(
    outputs: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    model_version: str = "",
    image_id: str = "",
    provenance: Provenance | None = None,
    management: ManagementPolicy | None = None,
    coverage: float | None = None,
) -> Prediction:
    """A :class:`Prediction` from the ensemble's output arrays of one study (batch row 0);
    ``management`` (the server's published policy) explains the suggestion, ``coverage`` is the
    published coverage of the class sets. Outputs a server of an older export lacks (the class
    sets, the OOD flag) are left at their defaults."""
    probs = np.asarray(outputs[S.PROBS], np.float64).reshape(-1)
    if probs.size != len(class_names):
        raise DmfnServerError(
            f"the server returned {probs.size} probabilities but the model has "
            f"{len(class_names)} class names"
        )
    top = np.asarray(outputs[S.TOP3_INDEX]).reshape(-1)
    labels = [_text(v) for v in np.asarray(outputs[S.TOP3_LABEL]).reshape(-1)]
    measurements = np.asarray(outputs[S.MEASUREMENTS], np.float64).reshape(-1)
    suggestion = _text(np.asarray(outputs[S.MANAGEMENT]).reshape(-1)[0])
    detail = suggestion
    if management is not None and set(class_names) <= set(management.by_class):
        detail = management.describe(probs, class_names)
    return Prediction(
        probs=MappingProxyType(
            {name: float(p) for name, p in zip(class_names, probs, strict=True)}
        ),
        top3=tuple((label, float(probs[i])) for label, i in zip(labels, top, strict=True)),
        malignant_prob=float(np.asarray(outputs[S.MALIGNANT_PROB]).reshape(-1)[0]),
        management=suggestion,
        measurements=MappingProxyType(
            {n: float(v) for n, v in zip(S.MEASUREMENT_FIELDS, measurements, strict=True)}
        ),
        model_version=model_version,
        image_id=image_id,
        provenance=provenance or Provenance(),
        management_detail=detail,
        class_set=_names(outputs.get(S.CLASS_SET)),
        binary_set=_names(outputs.get(S.BINARY_SET)),
        coverage=coverage,
        ood_score=float(np.asarray(outputs[S.OOD_SCORE]).reshape(-1)[0])
        if S.OOD_SCORE in outputs
        else float("nan"),
        ood_flag=bool(np.asarray(outputs[S.OOD_FLAG]).reshape(-1)[0])
        if S.OOD_FLAG in outputs
        else False,
    )


def coverage_of(contract: ServerContract) -> float | None:
    """The published coverage of the class sets (None when not published)."""
    return None if contract.uncertainty is None else contract.uncertainty.conformal.coverage


def _names(values: np.ndarray | None) -> tuple[str, ...]:
    """The non-empty names of a padded BYTES output (None: the output is absent)."""
    if values is None:
        return ()
    return tuple(t for t in (_text(v) for v in np.asarray(values).reshape(-1)) if t)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- audit trail
def resolve_audit(audit: AuditLog | Literal[False] | None) -> AuditLog | None:
    """The ``audit`` argument of the clients: an AuditLog, False (no trail), or None (the
    environment's configuration, :func:`dmfn.contract.audit.client_audit`)."""
    if audit is None:
        return client_audit()
    if audit is False:
        return None
    if not isinstance(audit, AuditLog):
        raise ValueError(
            f"argument 'audit': must be an AuditLog, False or None, got {type(audit).__name__}"
        )
    return audit


def refused_by_rule(err: BaseException) -> bool:
    """True when ``err`` turned a study away for breaking a rule (a ValueError here, a 400 /
    INVALID_ARGUMENT from the server), False for a failure (unreachable, internal error)."""
    if isinstance(err, ValueError):
        return True
    status = str(getattr(err, "status", "") or "")
    return status == "400" or status.endswith("INVALID_ARGUMENT")


def audit_prediction(
    audit: AuditLog | None,
    source: str,
    study: object,
    started: float,
    model_sha256: str | None,
    prediction: Prediction | None = None,
    error: BaseException | None = None,
    request_id: str | None = None,
) -> None:
    """Append the line of one study's prediction (or refusal / failure) to ``audit``.
    ``started`` is the ``time.perf_counter()`` at its start. Never raises."""
    if audit is None:
        return
    try:
        ids = study_identifiers(
            str(getattr(study, "study_uid", "") or ""), str(getattr(study, "image_id", "") or "")
        )
        outcome = "ok" if error is None else ("refused" if refused_by_rule(error) else "failed")
        audit.record(
            source=source,
            caller=local_caller(),
            outcome=outcome,
            request_id=request_id,
            model_sha256=model_sha256 or None,
            rule=None if error is None else one_line(error),
            top_class=prediction.top3[0][0] if prediction is not None and prediction.top3 else None,
            malignant_prob=None if prediction is None else prediction.malignant_prob,
            duration_ms=(time.perf_counter() - started) * 1e3,
            **ids,
        )
    except Exception as err:  # the trail must never cost a prediction
        log.warning("audit line not written: %s", one_line(err))


# --------------------------------------------------------------------------- the client
@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach the server: ``host:port``, protocol, timeout (s), TLS, the CA,
    and the client's credentials (API key, client certificate)."""

    url: str
    protocol: str
    timeout_s: float
    tls: bool
    ca_cert: str | None
    credentials: Credentials = field(default_factory=Credentials)

    @classmethod
    def parse(
        cls,
        url: str | None,
        protocol: str,
        timeout_s: float,
        tls: bool = False,
        ca_cert: str | None = None,
        credentials: Credentials | None = None,
    ) -> Endpoint:
        """Check the client's arguments (ValueError naming the argument); ``http(s)://host:port``
        is accepted for HTTP (https turns TLS on), a CA certificate or a client certificate
        turns TLS on."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"argument 'protocol': must be one of {PROTOCOLS}, got {protocol!r}")
        if not (isinstance(timeout_s, int | float) and timeout_s > 0):
            raise ValueError(f"argument 'timeout_s': must be a number > 0, got {timeout_s!r}")
        url = url or DEFAULT_URLS[protocol]
        scheme, sep, rest = url.partition("://")
        if sep:
            if scheme not in ("http", "https") or protocol != "http" or not rest:
                raise ValueError(
                    f"argument 'url': must be host:port (or http(s)://host:port for "
                    f"protocol http), got {url!r}"
                )
            url, tls = rest.rstrip("/"), tls or scheme == "https"
        if ca_cert is not None:
            from pathlib import Path

            if not Path(ca_cert).is_file():
                raise ValueError(f"argument 'ca_cert': {ca_cert} is not a file")
            tls = True
        credentials = credentials or Credentials()
        if credentials.has_certificate:
            tls = True
        return cls(
            url,
            protocol,
            float(timeout_s),
            bool(tls),
            None if ca_cert is None else str(ca_cert),
            credentials,
        )

    @property
    def headers(self) -> dict[str, str] | None:
        """Headers every request carries (the API key), or None."""
        return self.credentials.headers(self.protocol)


def response_arrays(result: Any) -> dict[str, np.ndarray]:
    """The response tensors of a tritonclient result; DmfnServerError if one is missing."""
    arrays = {t.name: result.as_numpy(t.name) for t in S.Schema().response_outputs}
    missing = [name for name, value in arrays.items() if value is None]
    if missing:
        raise DmfnServerError(f"the server's response lacks the outputs {missing}")
    return arrays


def contract_of(config: Mapping[str, Any], model: str) -> ServerContract:
    """The :class:`ServerContract` in a model config (JSON form); DmfnServerError if absent."""
    try:
        return ServerContract.from_parameters(config.get("parameters", {}))
    except ValueError as err:
        raise DmfnServerError(f"model '{model}': {err}") from err


def check_contract(contract: object) -> None:
    """The ``contract`` argument of the clients: a ServerContract or None."""
    if contract is not None and not isinstance(contract, ServerContract):
        raise ValueError(
            f"argument 'contract': must be a ServerContract or None, got {type(contract).__name__}"
        )


class DmfnClient:
    """A client of the ``dmfn_pipeline`` ensemble on a Triton server.

    Args:
        url: ``host:port`` of the server (default 127.0.0.1:8000 for http, :8001 for grpc).
        protocol: ``"http"`` or ``"grpc"``.
        model: the ensemble to call.
        timeout_s: per-request timeout in seconds (connection and response).
        contract: the model's ROI margin / CTC features / class names; None reads them from the
            model's config on first use.
        tls: connect with TLS (HTTPS, or gRPC over TLS), e.g. to ``dmfn serve --tls-cert``.
            A URL written ``https://host:port`` turns it on too.
        ca_cert: PEM file of the certificate authority (or the self-signed certificate) that
            signed the server's certificate; None trusts the system's authorities.
        api_key: the key of ``dmfn serve --api-keys``, sent as ``Authorization: Bearer``; None
            takes ``$DMFN_API_KEY`` or the file named by ``$DMFN_API_KEY_FILE``, if set.
        client_cert, client_key: PEM files of a client certificate and its key, for ``dmfn
            serve --tls-client-ca`` (mutual TLS).
        audit: where each prediction's audit line goes (:mod:`dmfn.contract.audit`): an
            AuditLog, False for none, None for the environment's configuration
            (``$DMFN_AUDIT_LOG``, by default ``~/.local/state/dmfn/audit.jsonl``).

    Safe to share between threads (one tritonclient client per thread inside). Use as a context
    manager or call :meth:`close`.
    """

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "http",
        model: str = S.PIPELINE_MODEL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        contract: ServerContract | None = None,
        tls: bool = False,
        ca_cert: str | None = None,
        api_key: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        audit: AuditLog | Literal[False] | None = None,
    ) -> None:
        credentials = Credentials.resolve(api_key, client_cert, client_key)
        self.audit = resolve_audit(audit)
        endpoint = Endpoint.parse(url, protocol, timeout_s, tls, ca_cert, credentials)
        check_contract(contract)
        self.endpoint = endpoint
        self.url, self.tls, self.ca_cert = endpoint.url, endpoint.tls, endpoint.ca_cert
        self.protocol = protocol
        self.model = model
        self.timeout_s = endpoint.timeout_s
        self._contract = contract
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[Any] = []
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
        self._module = module

    # ------------------------------------------------------------------ plumbing
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            tls: dict[str, Any]
            certificate = self.endpoint.credentials
            if self.protocol == "http":
                tls = {}
                if self.tls:
                    options: dict[str, str] = {}
                    if self.ca_cert is not None:
                        options["ca_certs"] = self.ca_cert
                    if certificate.client_cert is not None:
                        options["certfile"] = certificate.client_cert
                        options["keyfile"] = str(certificate.client_key)
                    tls = {"ssl": True, "ssl_options": options} if options else {"ssl": True}
                client = self._module.InferenceServerClient(
                    self.url,
                    connection_timeout=self.timeout_s,
                    network_timeout=self.timeout_s,
                    **tls,
                )
            else:
                tls = {}
                if self.tls:
                    tls = {
                        "ssl": True,
                        "root_certificates": self.ca_cert,
                        "private_key": certificate.client_key,
                        "certificate_chain": certificate.client_cert,
                    }
                client = self._module.InferenceServerClient(self.url, **tls)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _call(self, what: str, function, *args, **kwargs) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return function(*args, **kwargs)
        except InferenceServerException as err:
            raise DmfnServerError(err.message() or str(err), _status(err)) from err
        except (OSError, TimeoutError) as err:  # refused, reset, timed out (HTTP)
            raise DmfnServerError(
                f"{what}: cannot reach the Triton server at {self.url} ({self.protocol}): {err}"
            ) from err
        except http.client.HTTPException as err:  # an answer that is not HTTP/1.1
            raise DmfnServerError(
                f"{what}: {self.url} does not answer HTTP ({err}); if this port speaks gRPC "
                "(Triton's 8001, dmfn serve's --grpc-port), use protocol 'grpc' "
                "(dmfn predict --protocol grpc)"
            ) from err

    def _timeout_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of every call: the API key's header, the gRPC timeout."""
        extra: dict[str, Any] = {"headers": self.endpoint.headers}
        if self.protocol == "grpc":
            extra["client_timeout"] = self.timeout_s
        return extra

    @property
    def contract(self) -> ServerContract:
        """The model's contract (read from the server's model config on first use)."""
        if self._contract is None:
            client = self._client()
            if self.protocol == "http":
                config = self._call(
                    "model config",
                    client.get_model_config,
                    self.model,
                    headers=self.endpoint.headers,
                )
            else:
                config = self._call(
                    "model config",
                    client.get_model_config,
                    self.model,
                    as_json=True,
                    **self._timeout_kwargs(),
                )["config"]
            self._contract = contract_of(config, self.model)
        return self._contract

    def is_ready(self) -> bool:
        """True when the server and the model are ready (False if unreachable)."""
        try:
            client = self._client()
            return bool(
                self._call("readiness", client.is_server_ready, headers=self.endpoint.headers)
                and self._call(
                    "readiness", client.is_model_ready, self.model, headers=self.endpoint.headers
                )
            )
        except DmfnServerError:
            return False

    # ------------------------------------------------------------------ predictions
    def predict(self, study: Study) -> Prediction:
        """Classify one study (see :func:`build_request` for what is sent); its audit line is
        written whatever the outcome (the request id it carries is the server line's too).

        Raises:
            ValueError: the study cannot be sent (no mask/bbox, missing CTC feature, ...).
            DmfnServerError: the server refused the request (message names the input and rule),
                failed, or could not be reached.
        """
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        try:
            prediction = self._predict(study, request_id)
        except Exception as err:
            audit_prediction(
                self.audit, "sdk", study, started, self._model_sha256(), error=err,
                request_id=request_id,
            )  # fmt: skip
            raise
        audit_prediction(
            self.audit, "sdk", study, started, prediction.provenance.sha256, prediction,
            request_id=request_id,
        )  # fmt: skip
        return prediction

    def _model_sha256(self) -> str | None:
        return None if self._contract is None else self._contract.provenance.sha256

    def _predict(self, study: Study, request_id: str) -> Prediction:
        contract = self.contract
        inputs = infer_inputs(self._module, build_request(study, contract))
        outputs = [
            self._module.InferRequestedOutput(t.name)
            for t in S.Schema(n_classes=len(contract.class_names)).response_outputs
        ]
        result = self._call(
            "inference",
            self._client().infer,
            self.model,
            inputs,
            outputs=outputs,
            request_id=request_id,
            **self._timeout_kwargs(),
        )
        return parse_response(
            response_arrays(result),
            contract.class_names,
            _model_version(result),
            study.image_id,
            contract.provenance,
            contract.management,
            coverage_of(contract),
        )

    def predict_many(
        self, studies: Iterable[Study], concurrency: int = 4, return_exceptions: bool = False
    ) -> list[Prediction | Exception]:
        """Classify many studies with ``concurrency`` requests in flight; results in input order.

        With ``return_exceptions=True`` a study that fails gives its exception in its place:
        ValueError (the study cannot be sent) or :class:`DmfnServerError` (the server refused or
        failed it, or anything unexpected happened while sending it; the original exception is
        its ``__cause__``). Otherwise the first failure is raised after every request has
        finished. Every study gets a result: a worker never dies on one study's failure.
        """
        if not (isinstance(concurrency, int) and concurrency >= 1):
            raise ValueError(
                f"argument 'concurrency': must be an integer >= 1, got {concurrency!r}"
            )
        studies = list(studies)
        self.contract  # noqa: B018 - fetch once before the threads start

        def one(study: object) -> Prediction | Exception:
            try:
                return self.predict(study)
            except (ValueError, DmfnServerError) as err:
                return err
            except Exception as err:  # a bug or a transport failure: keep the worker alive
                image_id = getattr(study, "image_id", "")
                wrapped = DmfnServerError(
                    f"study {image_id!r}: unexpected {type(err).__name__} while predicting: {err}"
                )
                wrapped.__cause__ = err
                return wrapped

        results: list[Prediction | Exception | None] = [None] * len(studies)
        indices = iter(range(len(studies)))
        take = threading.Lock()

        def worker() -> None:  # one tritonclient client per worker, closed by its own thread
            try:
                while True:
                    with take:
                        i = next(indices, None)
                    if i is None:
                        return
                    results[i] = one(studies[i])
            finally:
                self._close_thread_client()

        threads = [
            threading.Thread(target=worker, name=f"dmfn-predict-{n}", daemon=True)
            for n in range(min(concurrency, max(1, len(studies))))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        lost = [i for i, result in enumerate(results) if result is None]
        if lost:  # pragma: no cover - one() returns for every study; guards against a regression
            raise RuntimeError(f"predict_many: no result for studies {lost[:10]}")
        if not return_exceptions:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results  # type: ignore[return-value]

    def _close_thread_client(self) -> None:
        client = getattr(self._local, "client", None)
        if client is None:
            return
        self._local.client = None
        with self._lock:
            self._clients = [c for c in self._clients if c is not client]
        client.close()

    def close(self) -> None:
        """Close every underlying connection."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception as err:  # a gevent client closed from another thread
                log.debug("closing a tritonclient client failed: %r", err)
        self._local = threading.local()

    def __enter__(self) -> DmfnClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _status(err: Exception) -> str | None:
    status = getattr(err, "status", None)
    value = status() if callable(status) else status
    return None if value is None else str(value)


def _model_version(result: Any) -> str:
    response = result.get_response()
    if isinstance(response, Mapping):
        return f"{response.get('model_name', '')}/{response.get('model_version', '')}"
    return f"{response.model_name}/{response.model_version}"


__all__ = [
    "DmfnClient",
    "DmfnServerError",
    "Prediction",
    "build_request",
    "crop_study",
    "infer_inputs",
    "parse_response",
]
