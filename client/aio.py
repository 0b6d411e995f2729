"""The asyncio client of the dmfn Triton service, for applications built on asyncio.

``AsyncDmfnClient`` has the arguments and the answers of :class:`dmfn.client.sdk.DmfnClient` (the
same :class:`~dmfn.client.sdk.Prediction` objects, the same request bytes, the same errors), on
tritonclient's aio modules (aiohttp for HTTP, grpc.aio for gRPC)::

    async with AsyncDmfnClient("127.0.0.1:8000") as client:
        prediction = await client.predict(study)
        many = await client.predict_many(studies, concurrency=8)

One client serves any number of concurrent coroutines of one event loop.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal

from dmfn.client.credentials import Credentials
from dmfn.contract import schema as S
from dmfn.contract.audit import AuditLog
from dmfn.contract.server import ServerContract
from dmfn.contract.study import Study
from dmfn.contract.wire import build_request

from .sdk import (
    DEFAULT_TIMEOUT_S,
    DmfnServerError,
    Endpoint,
    Prediction,
    _model_version,
    _status,
    audit_prediction,
    check_contract,
    contract_of,
    coverage_of,
    infer_inputs,
    parse_response,
    resolve_audit,
    response_arrays,
)


class AsyncDmfnClient:
    """An asyncio client of the ``dmfn_pipeline`` ensemble (arguments as :class:`DmfnClient`)."""

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
        self.endpoint = Endpoint.parse(url, protocol, timeout_s, tls, ca_cert, credentials)
        check_contract(contract)
        self.model = model
        self._contract = contract
        self._client: Any = None
        if protocol == "http":
            import tritonclient.http as sync_module
            import tritonclient.http.aio as module
        else:
            import tritonclient.grpc as sync_module
            import tritonclient.grpc.aio as module
        self._module, self._sync_module = module, sync_module

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def protocol(self) -> str:
        return self.endpoint.protocol

    @property
    def _headers(self) -> dict[str, str] | None:
        return self.endpoint.headers

    # ------------------------------------------------------------------ plumbing
    def _connection(self) -> Any:
        """The tritonclient aio client, made on first use (inside the event loop)."""
        if self._client is None:
            e = self.endpoint
            cert, key = e.credentials.client_cert, e.credentials.client_key
            if e.protocol == "http":
                context = None
                if e.tls:
                    context = ssl.create_default_context(cafile=e.ca_cert)
                    if cert is not None:
                        context.load_cert_chain(cert, key)
                self._client = self._module.InferenceServerClient(
                    e.url, conn_timeout=e.timeout_s, ssl=e.tls, ssl_context=context
                )
            else:
                # tritonclient's grpc.aio client reads these files itself
                files = {
                    "root_certificates": e.ca_cert,
                    "certificate_chain": cert,
                    "private_key": key,
                }
                files = {k: v for k, v in files.items() if e.tls and v is not None}
                self._client = self._module.InferenceServerClient(e.url, ssl=e.tls, **files)
        return self._client

    async def _call(self, what: str, coroutine: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return await asyncio.wait_for(coroutine, self.endpoint.timeout_s)
        except InferenceServerException as err:
            raise DmfnServerError(err.message() or str(err), _status(err)) from err
        except (OSError, TimeoutError) as err:
            raise DmfnServerError(
                f"{what}: cannot reach the Triton server at {self.url} ({self.protocol}): {err}"
            ) from err
        except Exception as err:  # aiohttp's client errors are not OSErrors
            if type(err).__module__.startswith(("aiohttp", "grpc")):
                raise DmfnServerError(
                    f"{what}: cannot reach the Triton server at {self.url} ({self.protocol}): {err}"
                ) from err
            raise

    async def contract(self) -> ServerContract:
        """The model's contract (read from the server's model config on first use)."""
        if self._contract is None:
            client = self._connection()
            if self.protocol == "http":
                config = await self._call(
                    "model config", client.get_model_config(self.model, headers=self._headers)
                )
            else:
                reply = await self._call(
                    "model config",
                    client.get_model_config(self.model, as_json=True, headers=self._headers),
                )
                config = reply["config"]
            self._contract = contract_of(config, self.model)
        return self._contract

    async def is_ready(self) -> bool:
        """True when the server and the model are ready (False if unreachable)."""
        try:
            client = self._connection()
            return bool(
                await self._call("readiness", client.is_server_ready(headers=self._headers))
                and await self._call(
                    "readiness", client.is_model_ready(self.model, headers=self._headers)
                )
            )
        except DmfnServerError:
            return False

    # ------------------------------------------------------------------ predictions
    async def predict(self, study: Study) -> Prediction:
        """Classify one study; raises like :meth:`DmfnClient.predict`, and like it appends the
        study's audit line whatever the outcome."""
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        try:
            prediction = await self._predict(study, request_id)
        except Exception as err:
            sha256 = None if self._contract is None else self._contract.provenance.sha256
            audit_prediction(self.audit, "sdk", study, started, sha256, error=err,
                             request_id=request_id)  # fmt: skip
            raise
        audit_prediction(self.audit, "sdk", study, started, prediction.provenance.sha256,
                         prediction, request_id=request_id)  # fmt: skip
        return prediction

    async def _predict(self, study: Study, request_id: str) -> Prediction:
        contract = await self.contract()
        inputs = infer_inputs(self._sync_module, build_request(study, contract))
        outputs = [
            self._sync_module.InferRequestedOutput(t.name)
            for t in S.Schema(n_classes=len(contract.class_names)).response_outputs
        ]
        extra: dict[str, Any] = {"headers": self._headers, "request_id": request_id}
        if self.protocol == "grpc":
            extra["client_timeout"] = self.endpoint.timeout_s
        result = await self._call(
            "inference",
            self._connection().infer(self.model, inputs, outputs=outputs, **extra),
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

    async def predict_many(
        self, studies: Iterable[Study], concurrency: int = 4, return_exceptions: bool = False
    ) -> list[Prediction | Exception]:
        """Classify many studies with at most ``concurrency`` requests in flight; results in input
        order. Failures as :meth:`DmfnClient.predict_many`."""
        if not (isinstance(concurrency, int) and concurrency >= 1):
            raise ValueError(
                f"argument 'concurrency': must be an integer >= 1, got {concurrency!r}"
            )
        studies = list(studies)
        await self.contract()
        gate = asyncio.Semaphore(concurrency)

        async def one(study: Study) -> Prediction | Exception:
            async with gate:
                try:
                    return await self.predict(study)
                except (ValueError, DmfnServerError) as err:
                    return err
                except Exception as err:  # a bug or a transport failure: keep the others going
                    wrapped = DmfnServerError(
                        f"study {getattr(study, 'image_id', '')!r}: unexpected "
                        f"{type(err).__name__} while predicting: {err}"
                    )
                    wrapped.__cause__ = err
                    return wrapped

        results = await asyncio.gather(*(one(s) for s in studies))
        if not return_exceptions:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return list(results)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> AsyncDmfnClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
