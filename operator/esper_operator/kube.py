"""A small, typed Kubernetes REST client for the operator's own writes (httpx, JSON in and out).

kopf watches and patches the resources it serves; everything else the operator does (Jobs,
KernelArtifacts, ConfigMaps, Events, status writes) goes through this client, which speaks the
API exactly as ``kubectl`` does: plain JSON manifests, merge patches, 409 for "already there".
Credentials come from the pod's ServiceAccount in a cluster, or from ``KUBECONFIG``.
"""

import base64
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import yaml

from esper.contracts.crd import GROUP, VERSION
from esper_operator import OPERATOR_NAME
from esper_operator.settings import JsonObject

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"


class KubeError(RuntimeError):
    """An API request failed; ``status`` is the HTTP status (None: no answer).

    Attributes:
        status: The HTTP status code, when the server answered.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        """Create the error.

        Args:
            message: What failed, with the server's message.
            status: The HTTP status code.
        """
        super().__init__(message)
        self.status = status


class KubeConflictError(KubeError):
    """409: the object exists already, or changed since it was read."""


class KubeConfigError(ValueError):
    """No usable credentials (neither a ServiceAccount nor a kubeconfig)."""


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate to it.

    Attributes:
        server: Base URL of the API server.
        verify: TLS verification context.
        token: Bearer token, if any.
        cert: Client certificate and key files, if any.
        ca_file: The CA bundle ``verify`` was built from, if any (kopf's own connection needs
            the file).
    """

    server: str
    verify: ssl.SSLContext | bool
    token: str | None = None
    cert: tuple[str, str] | None = None
    ca_file: str | None = None


def _file_or_data(
    entry: dict[str, object], key: str, directory: Callable[[], Path], base: Path
) -> str | None:
    data = entry.get(f"{key}-data")
    if isinstance(data, str):
        path = directory() / key
        path.write_bytes(base64.b64decode(data))
        return str(path)
    value = entry.get(key)
    # Relative paths are relative to the kubeconfig file, as kubectl reads them.
    return str(base / value) if isinstance(value, str) else None


def _section(config: dict[str, object], kind: str, name: str) -> dict[str, object]:
    entries = config.get(f"{kind}s")
    if not isinstance(entries, list):
        raise KubeConfigError(f"kubeconfig has no {kind}s")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            inner = entry.get(kind)
            if isinstance(inner, dict):
                return cast(dict[str, object], inner)
    raise KubeConfigError(f"kubeconfig has no {kind} named '{name}'")


def credentials_from_kubeconfig(path: Path) -> Credentials:
    """Read the current context of a kubeconfig file.

    Args:
        path: The kubeconfig.

    Returns:
        The credentials of its current context.

    Raises:
        KubeConfigError: When the file lacks the pieces this client needs.
    """
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise KubeConfigError(f"{path} is not a kubeconfig")
    context_name = config.get("current-context")
    if not isinstance(context_name, str):
        raise KubeConfigError(f"{path} has no current-context")
    context = _section(config, "context", context_name)
    cluster = _section(config, "cluster", str(context.get("cluster")))
    user = _section(config, "user", str(context.get("user")))
    # Inline certificates are written to a private directory, since ssl and httpx take files;
    # it is made only when there is one (a kubeconfig of file paths or a token needs none).
    made: list[Path] = []

    def directory() -> Path:
        if not made:
            made.append(Path(tempfile.mkdtemp(prefix="esper-operator-kube-")))
        return made[0]

    base = path.parent
    server = cluster.get("server")
    if not isinstance(server, str):
        raise KubeConfigError(f"{path}: cluster of context '{context_name}' has no server")
    ca_file = _file_or_data(cluster, "certificate-authority", directory, base)
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    )
    if cluster.get("insecure-skip-tls-verify") is True:
        verify = False
    cert_file = _file_or_data(user, "client-certificate", directory, base)
    key_file = _file_or_data(user, "client-key", directory, base)
    token = user.get("token")
    token_file = user.get("tokenFile")
    if not isinstance(token, str) and isinstance(token_file, str):
        token = (base / token_file).read_text(encoding="utf-8").strip()
    if not isinstance(token, str) and not (cert_file and key_file):
        raise KubeConfigError(
            f"{path}: user of context '{context_name}' has neither a token nor a client "
            "certificate (exec and auth-provider plugins are not supported)"
        )
    return Credentials(
        server=server.rstrip("/"),
        verify=verify,
        token=token if isinstance(token, str) else None,
        cert=(cert_file, key_file) if cert_file and key_file else None,
        ca_file=ca_file,
    )


def load_credentials() -> Credentials:
    """Find credentials: the pod's ServiceAccount in a cluster, else ``KUBECONFIG``.

    In a pod the API server is ``KUBERNETES_SERVICE_HOST``:``KUBERNETES_SERVICE_PORT``, as
    client-go's in-cluster configuration finds it: no cluster DNS lookup is needed.

    Returns:
        The credentials.

    Raises:
        KubeConfigError: When neither is available.
    """
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if host and (SERVICE_ACCOUNT_DIR / "token").is_file():
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        ca_file = str(SERVICE_ACCOUNT_DIR / "ca.crt")
        return Credentials(
            server=f"https://{_host_for_url(host)}:{port}",
            verify=ssl.create_default_context(cafile=ca_file),
            token=(SERVICE_ACCOUNT_DIR / "token").read_text(encoding="utf-8").strip(),
            ca_file=ca_file,
        )
    path = Path(os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")))
    if not path.is_file():
        raise KubeConfigError(
            f"no in-cluster ServiceAccount and no kubeconfig at {path} (set KUBECONFIG)"
        )
    return credentials_from_kubeconfig(path)


def _host_for_url(host: str) -> str:
    # An IPv6 service address goes in brackets in a URL.
    return f"[{host}]" if ":" in host else host


def resource_path(api_version: str, plural: str, namespace: str, name: str | None = None) -> str:
    """Return the REST path of a namespaced resource (or of its collection).

    Args:
        api_version: ``v1``, ``batch/v1``, ``esper.dev/v1alpha1``...
        plural: The resource's plural name.
        namespace: Its namespace.
        name: The object's name; None for the collection.

    Returns:
        The path.
    """
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def esper_path(plural: str, namespace: str, name: str | None = None) -> str:
    """Return the REST path of one of Esper's resources (or of its collection).

    Args:
        plural: ``blueprints``, ``kernelartifacts`` or ``morphogeneticruns``.
        namespace: The namespace.
        name: The object's name; None for the collection.

    Returns:
        The path.
    """
    return resource_path(f"{GROUP}/{VERSION}", plural, namespace, name)


def metadata_of(body: JsonObject) -> JsonObject:
    """Return an object's ``metadata`` (empty when it has none).

    Args:
        body: The object.

    Returns:
        Its metadata.
    """
    value = body.get("metadata")
    return value if isinstance(value, dict) else {}


def generation_of(body: JsonObject) -> int:
    """Return an object's ``metadata.generation`` (0 when unset).

    Args:
        body: The object.

    Returns:
        The generation.
    """
    value = metadata_of(body).get("generation", 0)
    return value if isinstance(value, int) else 0


class KubeApi:
    """Blocking JSON access to the Kubernetes API (used from kopf's handler threads)."""

    def __init__(self, credentials: Credentials, timeout: float = 30.0) -> None:
        """Open a connection pool to the API server.

        Args:
            credentials: Server and authentication.
            timeout: Seconds per request.
        """
        headers = {"User-Agent": OPERATOR_NAME, "Accept": "application/json"}
        if credentials.token:
            headers["Authorization"] = f"Bearer {credentials.token}"
        self._client = httpx.Client(
            base_url=credentials.server,
            headers=headers,
            verify=credentials.verify,
            cert=credentials.cert,
            timeout=timeout,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: JsonObject | None = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> httpx.Response:
        try:
            response = self._client.request(
                method,
                path,
                json=body,
                params=params,
                headers={"Content-Type": content_type} if body is not None else None,
            )
        except httpx.TransportError as error:
            raise KubeError(f"{method} {path}: {type(error).__name__}: {error}") from error
        if response.status_code >= 400:
            message = response.text
            payload = _json(response)
            if payload is not None and isinstance(payload.get("message"), str):
                message = str(payload["message"])
            error_type = KubeConflictError if response.status_code == 409 else KubeError
            raise error_type(
                f"{method} {path}: {response.status_code} {message}", response.status_code
            )
        return response

    def get(self, path: str) -> JsonObject | None:
        """Read an object.

        Args:
            path: Its REST path.

        Returns:
            The object, or None when it does not exist.
        """
        try:
            response = self._call("GET", path)
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        return _json(response)

    def list(self, path: str, label_selector: str | None = None) -> list[JsonObject]:
        """List the objects of a collection (every page).

        Args:
            path: The collection's REST path.
            label_selector: Only objects matching it.

        Returns:
            The objects.
        """
        items: list[JsonObject] = []
        params: dict[str, str] = {"limit": "500"}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            page = _json(self._call("GET", path, params=params)) or {}
            items += [item for item in _list(page.get("items")) if isinstance(item, dict)]
            metadata = page.get("metadata")
            token = metadata.get("continue") if isinstance(metadata, dict) else None
            if not token:
                return items
            params["continue"] = str(token)

    def create(self, path: str, body: JsonObject) -> bool:
        """Create an object unless one of that name exists.

        Args:
            path: The collection's REST path.
            body: The manifest.

        Returns:
            True when created now, False when it existed already.
        """
        try:
            self._call("POST", path, body=body, params={"fieldManager": OPERATOR_NAME})
        except KubeConflictError:
            return False
        return True

    def merge_patch(self, path: str, patch: JsonObject) -> JsonObject | None:
        """Apply a JSON merge patch.

        Args:
            path: The object's (or its ``/status`` subresource's) REST path.
            patch: The patch.

        Returns:
            The patched object, or None when the object does not exist.
        """
        try:
            response = self._call(
                "PATCH",
                path,
                body=patch,
                params={"fieldManager": OPERATOR_NAME},
                content_type=MERGE_PATCH,
            )
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        return _json(response)

    def replace(self, path: str, body: JsonObject) -> JsonObject | None:
        """Replace an object (optimistic concurrency: 409 when it changed since it was read).

        Args:
            path: The object's (or its ``/status`` subresource's) REST path.
            body: The whole object, with the ``resourceVersion`` it was read at.

        Returns:
            The stored object, or None when the object does not exist.
        """
        try:
            response = self._call("PUT", path, body=body, params={"fieldManager": OPERATOR_NAME})
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        return _json(response)


def _json(response: httpx.Response) -> JsonObject | None:
    if not response.content:
        return None
    try:
        value = response.json()
    except ValueError:
        # Not JSON: the API server's plain "404 page not found", a proxy's HTML error page.
        return None
    return cast(JsonObject, value) if isinstance(value, dict) else None


def _list(value: object) -> list[object]:
    return cast(list[object], value) if isinstance(value, list) else []
