"""A typed HTTP client of Urza for workers, the operator and Kasmina's kernel loader.

Needs only the core install (httpx and the contracts). Connection errors, timeouts and 5xx
answers are retried with exponential backoff, and 429 (rate limited) after the server's
``Retry-After`` (bounded); every other failure raises at once with the server's one-line
explanation. Downloads are verified against their SHA-256 before any byte is
returned.
"""

import hashlib
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import (
    ArtifactSignature,
    BenchmarkReport,
    KernelArtifact,
    KernelPhase,
    KernelTarget,
)
from esper.contracts.urza_api import (
    ArtifactLink,
    BlueprintPage,
    BlueprintRecord,
    CompileRecord,
    KernelCreate,
    KernelPage,
    PhaseChange,
)

SHA256_HEADER = "X-Artifact-Sha256"
SIGNATURE_HEADER = "X-Artifact-Signature"
SIGNATURE_KEY_ID_HEADER = "X-Artifact-Signature-Key-Id"

ModelT = TypeVar("ModelT", bound=BaseModel)
QueryValue = str | int | float | bool
_COMPILE_RECORDS = TypeAdapter(list[CompileRecord])


class UrzaError(RuntimeError):
    """Base of the client's errors.

    Attributes:
        status: The HTTP status, when the server answered.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        """Build the error.

        Args:
            message: What went wrong (the server's detail when it gave one).
            status: The HTTP status, when the server answered.
        """
        super().__init__(message)
        self.status = status


class UrzaNotFoundError(UrzaError):
    """404: no such blueprint, kernel or artifact."""


class UrzaConflictError(UrzaError):
    """409: an illegal phase move or a conflict with the stored state."""


class UrzaRequestError(UrzaError):
    """400/413/422: the request was refused as invalid."""


class UrzaAuthError(UrzaError):
    """401/403: missing or invalid bearer token."""


class UrzaUnavailableError(UrzaError):
    """The server could not be reached or kept failing (5xx) after every retry."""


class UrzaRateLimitedError(UrzaUnavailableError):
    """429: the server kept refusing this client's rate after every retry."""


class UrzaIntegrityError(UrzaError):
    """Downloaded bytes did not match their SHA-256; they were discarded."""


_ERRORS_BY_STATUS: dict[int, type[UrzaError]] = {
    400: UrzaRequestError,
    401: UrzaAuthError,
    403: UrzaAuthError,
    404: UrzaNotFoundError,
    409: UrzaConflictError,
    413: UrzaRequestError,
    422: UrzaRequestError,
}


class UrzaClient:
    """Client of Urza's ``/v1`` API.

    Args:
        base_url: Urza's address, e.g. ``http://127.0.0.1:8420``.
        token: Bearer token for writes (and reads, where required).
        timeout: Seconds per request (connect, read, write).
        retries: Extra attempts after a connection error, timeout, 5xx or 429.
        backoff: Seconds before the first retry; doubled for each further one.
        transport: An httpx transport to use (for example to call an app in-process).
        sleep: The function that waits between retries.
        max_retry_after: Longest wait a 429's ``Retry-After`` may ask for; a longer one is cut
            to this.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.25,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_retry_after: float = 30.0,
    ) -> None:
        """Create the client (see the class docstring)."""
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError("retries and backoff must be >= 0 and timeout > 0")
        if max_retry_after < 0:
            raise ValueError("max_retry_after must be >= 0")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )
        self._retries = retries
        self._backoff = backoff
        self._sleep = sleep
        self._max_retry_after = max_retry_after

    def __enter__(self) -> "UrzaClient":
        """Enter a ``with`` block; the connection pool closes at its end."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the connection pool."""
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        content: bytes | None = None,
        params: Mapping[str, QueryValue] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        attempt = 0
        while True:
            wait = self._backoff * (2**attempt)
            try:
                response = self._http.request(
                    method, path, json=json, content=content, params=params, headers=headers
                )
            except (httpx.TransportError, httpx.TimeoutException) as error:
                if attempt >= self._retries:
                    raise UrzaUnavailableError(
                        f"{method} {path}: Urza unreachable after {attempt + 1} attempt(s): "
                        f"{error}"
                    ) from error
            else:
                if response.status_code == 429:
                    if attempt >= self._retries:
                        raise UrzaRateLimitedError(
                            f"{method} {path}: rate limited, {_detail(response)} (after "
                            f"{attempt + 1} attempt(s))",
                            response.status_code,
                        )
                    wait = self._retry_after(response, wait)
                elif response.status_code < 500:
                    _raise_for_status(method, path, response)
                    return response
                elif attempt >= self._retries:
                    raise UrzaUnavailableError(
                        f"{method} {path}: {_detail(response)} (after {attempt + 1} attempt(s))",
                        response.status_code,
                    )
            self._sleep(wait)
            attempt += 1

    def _retry_after(self, response: httpx.Response, backoff: float) -> float:
        # Retry-After may also be an HTTP date; Urza sends seconds, and any other form falls
        # back to the usual backoff rather than guessing at clocks.
        value = response.headers.get("Retry-After", "").strip()
        if not value.isdigit():
            return backoff
        return min(float(value), self._max_retry_after)

    def _model(self, model: type[ModelT], response: httpx.Response) -> ModelT:
        return model.model_validate_json(response.content)

    # Blueprints -------------------------------------------------------------------------------

    def submit_blueprint(self, ir: BlueprintIR) -> BlueprintRecord:
        """Register a blueprint (idempotent).

        Args:
            ir: The design.

        Returns:
            The stored record (its ``hash`` is the blueprint's id).
        """
        response = self._request("POST", "/v1/blueprints", json=_wire(ir))
        return self._model(BlueprintRecord, response)

    def get_blueprint(self, blueprint_hash: str) -> BlueprintRecord:
        """Read a blueprint.

        Args:
            blueprint_hash: Its canonical hash.

        Returns:
            The record.
        """
        return self._model(
            BlueprintRecord, self._request("GET", f"/v1/blueprints/{blueprint_hash}")
        )

    def list_blueprints(
        self,
        *,
        name: str | None = None,
        tag: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> BlueprintPage:
        """List one page of blueprints.

        Args:
            name: Only this name.
            tag: Only this tag.
            limit: Page size.
            cursor: ``next_cursor`` of the previous page.

        Returns:
            The page.
        """
        params = _params(name=name, tag=tag, limit=limit, cursor=cursor)
        return self._model(BlueprintPage, self._request("GET", "/v1/blueprints", params=params))

    def delete_blueprint(self, blueprint_hash: str, *, cascade: bool = False) -> None:
        """Delete a blueprint (with ``cascade``, its kernels too).

        Args:
            blueprint_hash: The blueprint.
            cascade: Also delete its kernels and artifacts.
        """
        self._request(
            "DELETE", f"/v1/blueprints/{blueprint_hash}", params={"cascade": str(cascade).lower()}
        )

    # Kernels ----------------------------------------------------------------------------------

    def create_kernel(
        self, blueprint_hash: str, target: KernelTarget, tags: list[str] | None = None
    ) -> KernelArtifact:
        """Register a kernel in phase Pending (idempotent).

        Args:
            blueprint_hash: The blueprint.
            target: The compile target.
            tags: Labels.

        Returns:
            The kernel.
        """
        request = KernelCreate(blueprint_hash=blueprint_hash, target=target, tags=tags or [])
        return self._model(
            KernelArtifact, self._request("POST", "/v1/kernels", json=_wire(request))
        )

    def get_kernel(self, kernel_id: str) -> KernelArtifact:
        """Read a kernel.

        Args:
            kernel_id: The kernel id.

        Returns:
            The kernel.
        """
        return self._model(KernelArtifact, self._request("GET", f"/v1/kernels/{kernel_id}"))

    def list_kernels(
        self,
        *,
        blueprint_hash: str | None = None,
        target: KernelTarget | None = None,
        phase: KernelPhase | None = None,
        device: str | None = None,
        tag: str | None = None,
        max_latency_ms: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> KernelPage:
        """List one page of kernels.

        Args:
            blueprint_hash: Only this blueprint's kernels.
            target: Only kernels for this target.
            phase: Only kernels in this phase.
            device: Only ``cpu`` or ``cuda`` kernels.
            tag: Only kernels with this tag.
            max_latency_ms: Only kernels at most this fast at their largest batch.
            limit: Page size.
            cursor: ``next_cursor`` of the previous page.

        Returns:
            The page.
        """
        params = _params(
            blueprint=blueprint_hash,
            target=target.short() if target is not None else None,
            phase=phase.value if phase is not None else None,
            device=device,
            tag=tag,
            maxLatencyMs=max_latency_ms,
            limit=limit,
            cursor=cursor,
        )
        return self._model(KernelPage, self._request("GET", "/v1/kernels", params=params))

    def change_phase(self, kernel_id: str, change: PhaseChange) -> KernelArtifact:
        """Move a kernel to a new phase.

        Args:
            kernel_id: The kernel.
            change: The new phase and its fields.

        Returns:
            The updated kernel.
        """
        response = self._request("POST", f"/v1/kernels/{kernel_id}/phase", json=_wire(change))
        return self._model(KernelArtifact, response)

    def upload_artifact(
        self, kernel_id: str, data: bytes, signature: ArtifactSignature | None = None
    ) -> KernelArtifact:
        """Upload a Compiling kernel's bundle, declaring its SHA-256 and signature.

        Args:
            kernel_id: The kernel.
            data: The bundle.
            signature: Tezzeret's signature of the bundle; None uploads it unsigned.

        Returns:
            The kernel with its artifact fields set.
        """
        headers = {
            SHA256_HEADER: hashlib.sha256(data).hexdigest(),
            "Content-Type": "application/octet-stream",
        }
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature.hmac_sha256
            headers[SIGNATURE_KEY_ID_HEADER] = signature.key_id
        response = self._request(
            "PUT", f"/v1/kernels/{kernel_id}/artifact", content=data, headers=headers
        )
        return self._model(KernelArtifact, response)

    def download_artifact(self, kernel_id: str) -> bytes:
        """Download a kernel's bundle and verify it against the kernel's recorded SHA-256.

        Args:
            kernel_id: The kernel.

        Returns:
            The verified bytes.

        Raises:
            UrzaIntegrityError: When the bytes do not match; they are discarded.
        """
        kernel = self.get_kernel(kernel_id)
        if kernel.sha256 is None:
            raise UrzaNotFoundError(f"kernel {kernel_id} has no artifact yet", 404)
        response = self._request("GET", f"/v1/kernels/{kernel_id}/artifact")
        actual = hashlib.sha256(response.content).hexdigest()
        if actual != kernel.sha256:
            raise UrzaIntegrityError(
                f"kernel {kernel_id}: downloaded bytes hash to {actual}, expected {kernel.sha256}"
            )
        return response.content

    def artifact_link(self, kernel_id: str) -> ArtifactLink:
        """Get a presigned download URL (S3 blob store only).

        Args:
            kernel_id: The kernel.

        Returns:
            The link and the digest to verify.
        """
        response = self._request("GET", f"/v1/kernels/{kernel_id}/artifact-link")
        return self._model(ArtifactLink, response)

    def attach_report(self, kernel_id: str, report: BenchmarkReport) -> KernelArtifact:
        """Attach Urabrask's report; the kernel moves to its verdict.

        Args:
            kernel_id: The kernel (Validating).
            report: The report.

        Returns:
            The kernel, now Validated or Rejected.
        """
        response = self._request("POST", f"/v1/kernels/{kernel_id}/report", json=_wire(report))
        return self._model(KernelArtifact, response)

    def add_compile_record(self, record: CompileRecord) -> None:
        """Record one compilation attempt.

        Args:
            record: The attempt.
        """
        self._request("POST", f"/v1/kernels/{record.kernel_id}/compile-records", json=_wire(record))

    def compile_records(self, kernel_id: str) -> list[CompileRecord]:
        """Read a kernel's compilation attempts.

        Args:
            kernel_id: The kernel.

        Returns:
            The attempts, oldest first.
        """
        response = self._request("GET", f"/v1/kernels/{kernel_id}/compile-records")
        return _COMPILE_RECORDS.validate_json(response.content)

    def delete_kernel(self, kernel_id: str) -> None:
        """Delete a kernel.

        Args:
            kernel_id: The kernel.
        """
        self._request("DELETE", f"/v1/kernels/{kernel_id}")

    def ready(self) -> bool:
        """Tell whether Urza reports itself ready (database and blob store answer).

        Returns:
            True on 200 from ``/readyz``; False when it answers 503.
        """
        try:
            self._request("GET", "/readyz")
        except UrzaUnavailableError:
            return False
        return True


def _wire(model: BaseModel) -> object:
    return model.model_dump(mode="json", by_alias=True)


def _params(**values: QueryValue | None) -> dict[str, QueryValue]:
    return {key: value for key, value in values.items() if value is not None}


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return f"HTTP {response.status_code}: {body['detail']}"
    return f"HTTP {response.status_code}"


def _raise_for_status(method: str, path: str, response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    error_type = _ERRORS_BY_STATUS.get(response.status_code, UrzaError)
    raise error_type(f"{method} {path}: {_detail(response)}", response.status_code)
