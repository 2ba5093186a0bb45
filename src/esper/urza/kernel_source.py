"""An Urza-backed kernel source for Kasmina (``esper.wrap(model, kernels=UrzaKernelSource(url))``).

It lives in Urza's package and is passed in by the caller, so Kasmina depends only on the
source interface (``fetch_bundle``), never on Urza.
"""

from esper.contracts.bundle import FetchedBundle
from esper.contracts.kernel import KernelPhase
from esper.urza.client import UrzaClient, UrzaError


class KernelNotUsableError(UrzaError):
    """Raised for a kernel that exists but is not Validated: it must not be grafted."""


class UrzaKernelSource:
    """Fetches Validated kernel bundles from Urza over HTTP.

    Args:
        url: Urza's address (``http://127.0.0.1:8420``), or a ready client.
        token: Bearer token, when Urza requires one for reads.
    """

    def __init__(self, url: str | UrzaClient, token: str | None = None) -> None:
        """Connect (lazily: no request is made until a kernel is fetched)."""
        self._client = url if isinstance(url, UrzaClient) else UrzaClient(url, token=token)

    def fetch_bundle(self, kernel_id: str) -> FetchedBundle:
        """Download a Validated kernel's bundle with its recorded digest and signature.

        Args:
            kernel_id: The kernel.

        Returns:
            The bundle bytes, the SHA-256 Urza recorded for them (the client has already
            checked the bytes against it; the loader checks again before use) and Tezzeret's
            signature, which the loader checks before anything else.

        Raises:
            KernelNotUsableError: When the kernel is not Validated.
            UrzaError: When Urza cannot serve it.
        """
        kernel = self._client.get_kernel(kernel_id)
        if kernel.phase is not KernelPhase.VALIDATED or kernel.sha256 is None:
            raise KernelNotUsableError(
                f"kernel {kernel_id} is {kernel.phase.value}; only Validated kernels are grafted"
            )
        return FetchedBundle(
            data=self._client.download_artifact(kernel_id),
            sha256=kernel.sha256,
            signature=kernel.signature,
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()
