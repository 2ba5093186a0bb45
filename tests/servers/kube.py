"""A throwaway Kubernetes control plane for tests (envtest-style, plus controllers and scheduler).

:class:`ControlPlane` runs etcd, kube-apiserver, kube-controller-manager and kube-scheduler as
child processes on free loopback ports, with their data, certificates and logs in one private
temporary directory. Unlike controller-runtime's envtest it also runs the controller manager (Job,
garbage collector, namespace and service-account controllers, ...) and the scheduler, so Jobs get
Pods, Pods get Nodes and owner references are garbage-collected for real. Nodes and the Pods on them
are run by the test-only stand-in kubelet (``tests/support/kubelet.py``).

The Kubernetes binaries come from ``scripts/build-control-plane.sh`` (``$KUBEBUILDER_ASSETS`` wins
when set); etcd is ``$ESPER_ETCD``, ``$KUBEBUILDER_ASSETS/etcd`` or ``etcd`` on ``PATH`` (Debian's
etcd-server). Certificates and keys are generated with the ``openssl`` command line tool.

Security setup (as in a real cluster, minus the network): the API server serves TLS only, with
client-certificate authentication (the admin kubeconfig: ``CN=esper-admin, O=system:masters``), a
static token file (the same admin identity, :attr:`ControlPlane.admin_token`), ServiceAccount
tokens (signed with a generated RSA key) and RBAC authorization. See ``docs/control-plane.md``.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar

import yaml

from tests.servers._process import (
    KEEP_DIRS_ENV,
    BinaryNotFoundError,
    ServerError,
    ServerProcess,
    free_port,
)

KUBERNETES_VERSION = "v1.37.2"
ASSETS_ENV = "KUBEBUILDER_ASSETS"
ETCD_ENV = "ESPER_ETCD"
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-control-plane.sh"
CRDS_DIR = REPO_ROOT / "crds"
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "esper-admin"
#: The controllers the controller manager runs: what Jobs, garbage collection, namespaces and
#: ServiceAccounts need, plus Deployments (for running a component as a Deployment).
CONTROLLERS = (
    "job-controller",
    "ttl-after-finished-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "pod-garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
)
_BUILD_HINT = f"build them with: {BUILD_SCRIPT} (a cold build takes 10-15 minutes on 2 cores)"
_ETCD_HINT = (
    "install the Debian package 'etcd-server' (apt-get install etcd-server) or set "
    f"{ETCD_ENV} to an etcd binary"
)
_SERVING_SANS = (
    "IP:127.0.0.1",
    "IP:10.0.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)


class KubectlError(ServerError):
    """A kubectl command exited with a non-zero status.

    Attributes:
        args_: The kubectl arguments.
        returncode: Its exit status.
        stdout: Its standard output.
        stderr: Its standard error (the API server's message).
    """

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        """Describe the failed command.

        Args:
            args: The kubectl arguments.
            returncode: Its exit status.
            stdout: Its standard output.
            stderr: Its standard error.
        """
        super().__init__(
            f"kubectl {' '.join(args)} exited with {returncode}: {stderr.strip() or stdout.strip()}"
        )
        self.args_ = tuple(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def find_control_plane_bin_dir() -> Path:
    """Locate the directory with kube-apiserver, kube-controller-manager, kube-scheduler, kubectl.

    ``$KUBEBUILDER_ASSETS`` when set, else the directory ``scripts/build-control-plane.sh
    --print-path`` names.

    Returns:
        The directory.

    Raises:
        BinaryNotFoundError: A binary is missing (the message says how to build it).
    """
    override = os.environ.get(ASSETS_ENV)
    if override:
        bin_dir = Path(override)
        origin = f"{ASSETS_ENV}={override}"
    else:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--print-path"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if result.returncode != 0:
            raise BinaryNotFoundError(
                f"{BUILD_SCRIPT} --print-path failed ({result.returncode}): {result.stderr.strip()}"
            )
        bin_dir = Path(result.stdout.strip().splitlines()[-1])
        origin = str(bin_dir)
    missing = [name for name in KUBE_BINARIES if not os.access(bin_dir / name, os.X_OK)]
    if missing:
        hint = (
            f"point {ASSETS_ENV} at a directory with all of {', '.join(KUBE_BINARIES)} (envtest's "
            f"assets lack the controller manager and the scheduler), or unset it and {_BUILD_HINT}"
            if override
            else _BUILD_HINT
        )
        raise BinaryNotFoundError(
            f"the test control plane binaries {', '.join(missing)} are missing in {origin}; {hint}"
        )
    return bin_dir


def find_etcd(bin_dir: Path | None = None) -> Path:
    """Locate etcd: ``$ESPER_ETCD``, then ``etcd`` in ``bin_dir`` (envtest assets), then ``PATH``.

    Args:
        bin_dir: The control plane binary directory, searched before ``PATH``.

    Returns:
        The etcd binary.

    Raises:
        BinaryNotFoundError: etcd is not installed.
    """
    override = os.environ.get(ETCD_ENV)
    if override:
        if not os.access(override, os.X_OK):
            raise BinaryNotFoundError(f"{ETCD_ENV}={override} is not an executable file")
        return Path(override)
    candidates = [bin_dir / "etcd"] if bin_dir is not None else []
    on_path = shutil.which("etcd")
    if on_path is not None:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BinaryNotFoundError(f"etcd not found: {_ETCD_HINT}")


@dataclass(frozen=True)
class Credentials:
    """The generated PKI and tokens of one control plane (all files PEM).

    Attributes:
        ca_cert: The CA certificate (trusted for the serving certificate and client certificates).
        ca_key: The CA's private key.
        serving_cert: Serving certificate for 127.0.0.1/localhost/kubernetes.default.svc (all
            three components use it).
        serving_key: Its key.
        admin_cert: Client certificate ``CN=esper-admin, O=system:masters``.
        admin_key: Its key.
        service_account_key: RSA key that signs ServiceAccount tokens.
        service_account_public_key: Its public key (token verification).
        token_file: The API server's static token file.
        admin_token: Bearer token of the admin identity (in ``token_file``).
    """

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_key: Path
    service_account_public_key: Path
    token_file: Path
    admin_token: str


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        raise ServerError(f"openssl {' '.join(args)} failed ({result.returncode}): {result.stderr}")


def _issue(directory: Path, name: str, subject: str, extensions: Sequence[str]) -> None:
    """Create ``name.key`` and ``name.crt`` signed by ``ca.key`` in ``directory``."""
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=directory
    )
    (directory / f"{name}.ext").write_text("\n".join(extensions) + "\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-set_serial", f"0x{secrets.token_hex(16)}", "-days", "3650", "-sha256",
        "-extfile", f"{name}.ext", "-out", f"{name}.crt",
        cwd=directory,
    )  # fmt: skip


def generate_credentials(directory: Path) -> Credentials:
    """Generate a CA, serving and admin client certificates, a ServiceAccount key and a token file.

    Args:
        directory: An existing, private directory for the files.

    Returns:
        The paths and the admin token.

    Raises:
        ServerError: openssl failed.
    """
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=esper-test-ca", "-days", "3650",
        "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.crt",
        cwd=directory,
    )  # fmt: skip
    _issue(
        directory,
        "serving",
        "/CN=kube-apiserver",
        [
            "basicConstraints=CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=serverAuth",
            f"subjectAltName={','.join(_SERVING_SANS)}",
        ],
    )
    _issue(
        directory,
        "admin",
        f"/O=system:masters/CN={ADMIN_USER}",
        [
            "basicConstraints=CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=clientAuth",
        ],
    )
    _openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key",
        cwd=directory,
    )  # fmt: skip
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    admin_token = secrets.token_hex(24)
    token_file = directory / "tokens.csv"
    # token,user,uid,"group1,group2"
    token_file.write_text(f'{admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
    for path in directory.iterdir():
        path.chmod(0o600)
    return Credentials(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "serving.crt",
        serving_key=directory / "serving.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        service_account_key=directory / "sa.key",
        service_account_public_key=directory / "sa.pub",
        token_file=token_file,
        admin_token=admin_token,
    )


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_cert: Path,
    user: Mapping[str, str],
    user_name: str,
    namespace: str | None = None,
) -> Path:
    """Write a kubeconfig with one cluster, one user and one (current) context.

    Args:
        path: Where to write it (parent directories are created; mode 0600).
        server: The API server URL.
        ca_cert: The CA certificate file that verifies the server.
        user: The ``users[].user`` mapping (``token`` or ``client-certificate``/``client-key``).
        user_name: Name of the user entry.
        namespace: The context's default namespace.

    Returns:
        ``path``.
    """
    context: dict[str, str] = {"cluster": "esper-test", "user": user_name}
    if namespace is not None:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "esper-test",
                "cluster": {"server": server, "certificate-authority": str(ca_cert)},
            }
        ],
        "users": [{"name": user_name, "user": dict(user)}],
        "contexts": [{"name": "esper-test", "context": context}],
        "current-context": "esper-test",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _https_ok(url: str, ca_cert: Path, token: str | None = None, timeout: float = 2.0) -> bool:
    """Whether ``GET url`` answers 200 (connection errors and other statuses count as not yet)."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            status: int = response.status
            return status == 200
    except urllib.error.HTTPError:
        return False  # e.g. 500 from /readyz while post-start hooks run
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class _Component(ServerProcess):
    """A control plane process whose directory lives inside the control plane's directory.

    A stop gets 5 s before SIGKILL: kube-apiserver shuts its controllers and listener down in well
    under a second but its process then stays alive for more than 15 s (with clients connected);
    etcd's data is safe either way.
    """

    # When the test process dies, SIGKILL: a SIGTERMed kube-apiserver whose etcd is going away
    # too waits for it indefinitely.
    death_signal: ClassVar[signal.Signals] = signal.SIGKILL

    def __init__(self, parent_dir: Path, *, startup_timeout: float) -> None:
        super().__init__(startup_timeout=startup_timeout, shutdown_timeout=5.0)
        self._parent_dir = parent_dir

    def _make_base_dir(self) -> Path:
        path = self._parent_dir / self.name
        path.mkdir(mode=0o700)
        return path


class EtcdServer(_Component):
    """etcd with its data in a private directory; clients on :attr:`port`, peers on another port."""

    name: ClassVar[str] = "etcd"

    def __init__(self, binary: Path, parent_dir: Path, *, startup_timeout: float = 60.0) -> None:
        """Prepare etcd; nothing is started yet.

        Args:
            binary: The etcd binary.
            parent_dir: The control plane directory (etcd's own directory is created inside).
            startup_timeout: Seconds a start may take.
        """
        super().__init__(parent_dir, startup_timeout=startup_timeout)
        self.binary = binary
        self.peer_port: int | None = None
        self._ready_once = False

    @property
    def url(self) -> str:
        """The client URL (``http://127.0.0.1:<port>``)."""
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        if not self._ready_once:
            self.peer_port = free_port()  # a new one on every first-start attempt
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            str(self.binary),
            "--name=esper-test",
            f"--data-dir={self.base_dir / 'data'}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=esper-test={peer}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync",
            "--snapshot-count=10000",
            "--log-level=warn",
        ]

    def _probe(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2.0) as response:
                healthy = b'"true"' in response.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return healthy

    def _after_ready(self) -> None:
        self._ready_once = True


class KubeAPIServer(_Component):
    """kube-apiserver: TLS on 127.0.0.1:<port>, RBAC, client certs, a token file, SA tokens."""

    name: ClassVar[str] = "kube-apiserver"

    def __init__(
        self,
        binary: Path,
        parent_dir: Path,
        credentials: Credentials,
        etcd: EtcdServer,
        *,
        startup_timeout: float = 120.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Prepare the API server; nothing is started yet.

        Args:
            binary: The kube-apiserver binary.
            parent_dir: The control plane directory.
            credentials: Certificates, keys and the token file.
            etcd: The (started) etcd it stores into.
            startup_timeout: Seconds until ``/readyz`` must answer ok.
            extra_args: More command line flags (appended).
        """
        super().__init__(parent_dir, startup_timeout=startup_timeout)
        self.binary = binary
        self.credentials = credentials
        self.etcd = etcd
        self.extra_args = tuple(extra_args)

    @property
    def url(self) -> str:
        """The API server URL (``https://127.0.0.1:<port>``)."""
        return f"https://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        creds = self.credentials
        return [
            str(self.binary),
            f"--etcd-servers={self.etcd.url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The endpoint reconciler refuses loopback addresses; nothing here needs the endpoints
            # of the "kubernetes" Service (pods reach the API server at 127.0.0.1 directly).
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.port}",
            f"--cert-dir={self.base_dir / 'certs'}",
            f"--tls-cert-file={creds.serving_cert}",
            f"--tls-private-key-file={creds.serving_key}",
            f"--client-ca-file={creds.ca_cert}",
            f"--token-auth-file={creds.token_file}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={creds.service_account_public_key}",
            f"--service-account-signing-key-file={creds.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--profiling=false",
            *self.extra_args,
        ]

    def _probe(self) -> bool:
        return _https_ok(
            f"{self.url}/readyz", self.credentials.ca_cert, token=self.credentials.admin_token
        )


class _KubeComponent(_Component):
    """kube-controller-manager or kube-scheduler: admin kubeconfig, TLS health endpoint."""

    def __init__(
        self,
        binary: Path,
        parent_dir: Path,
        credentials: Credentials,
        kubeconfig: Path,
        *,
        startup_timeout: float = 60.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(parent_dir, startup_timeout=startup_timeout)
        self.binary = binary
        self.credentials = credentials
        self.kubeconfig = kubeconfig
        self.extra_args = tuple(extra_args)

    def _common_args(self) -> list[str]:
        return [
            str(self.binary),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={self.credentials.serving_cert}",
            f"--tls-private-key-file={self.credentials.serving_key}",
            "--leader-elect=false",
            "--profiling=false",
            # etcd 3.4 before 3.4.31 lacks the watch progress requests that the API server needs
            # for watch-list streams; it refuses them and every informer falls back to list+watch.
            # Skip the refused attempt.
            "--feature-gates=WatchListClient=false",
        ]

    def _probe(self) -> bool:
        return _https_ok(f"https://127.0.0.1:{self.port}/healthz", self.credentials.ca_cert)


class KubeControllerManager(_KubeComponent):
    """kube-controller-manager running :data:`CONTROLLERS` with the admin identity."""

    name: ClassVar[str] = "kube-controller-manager"

    def _command(self) -> list[str]:
        return [
            *self._common_args(),
            f"--controllers={','.join(CONTROLLERS)}",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={self.credentials.service_account_key}",
            f"--root-ca-file={self.credentials.ca_cert}",
            *self.extra_args,
        ]


class KubeScheduler(_KubeComponent):
    """kube-scheduler with the admin identity and the default profile."""

    name: ClassVar[str] = "kube-scheduler"

    def _command(self) -> list[str]:
        return [*self._common_args(), *self.extra_args]


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler, with the CRDs applied.

    Use as a context manager or call :meth:`start` and :meth:`close`. The processes are
    :class:`~tests.servers.ServerProcess` objects (:attr:`etcd`, :attr:`apiserver`,
    :attr:`controller_manager`, :attr:`scheduler`), so a fault test may stop and start one.

    Attributes:
        bin_dir: Directory of the Kubernetes binaries.
        base_dir: The private temporary directory (PKI, kubeconfigs, component data and logs).
        kubeconfig: The admin kubeconfig (client certificate in group ``system:masters``).
        credentials: The generated PKI and admin token; valid after :meth:`start`.
        crds_dir: The directory of CRD manifests applied on start (None: none).
    """

    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        etcd_binary: Path | None = None,
        crds_dir: Path | None = CRDS_DIR,
        startup_timeout: float = 120.0,
        apiserver_args: Sequence[str] = (),
        controller_manager_args: Sequence[str] = (),
        scheduler_args: Sequence[str] = (),
    ) -> None:
        """Find the binaries and create the (empty) temporary directory; nothing is started.

        Args:
            bin_dir: Directory of the Kubernetes binaries; :func:`find_control_plane_bin_dir`
                when None.
            etcd_binary: The etcd binary; :func:`find_etcd` when None.
            crds_dir: CRD manifests to apply (and wait for) before the controller manager starts,
                so its garbage collector watches the custom resources from the beginning.
            startup_timeout: Seconds each component may take to become ready.
            apiserver_args: Extra kube-apiserver flags.
            controller_manager_args: Extra kube-controller-manager flags.
            scheduler_args: Extra kube-scheduler flags.

        Raises:
            BinaryNotFoundError: A binary is missing (the message says how to build it).
        """
        self.bin_dir = bin_dir if bin_dir is not None else find_control_plane_bin_dir()
        self._etcd_binary = etcd_binary if etcd_binary is not None else find_etcd(self.bin_dir)
        self.crds_dir = crds_dir
        self.startup_timeout = startup_timeout
        self._apiserver_args = tuple(apiserver_args)
        self._controller_manager_args = tuple(controller_manager_args)
        self._scheduler_args = tuple(scheduler_args)
        self.base_dir = Path(tempfile.mkdtemp(prefix="esper-kube-"))
        self.kubeconfig = self.base_dir / "admin.kubeconfig"
        self._credentials: Credentials | None = None
        self._etcd: EtcdServer | None = None
        self._apiserver: KubeAPIServer | None = None
        self._controller_manager: KubeControllerManager | None = None
        self._scheduler: KubeScheduler | None = None
        self._closed = False
        #: Wall-clock seconds the last :meth:`start` took (None before).
        self.startup_seconds: float | None = None

    # -- components ----------------------------------------------------------------------------

    @property
    def credentials(self) -> Credentials:
        """The generated PKI and admin token."""
        if self._credentials is None:
            raise ServerError("control plane: no credentials before start()")
        return self._credentials

    @property
    def etcd(self) -> EtcdServer:
        """The etcd process."""
        if self._etcd is None:
            raise ServerError("control plane: etcd before start()")
        return self._etcd

    @property
    def apiserver(self) -> KubeAPIServer:
        """The kube-apiserver process."""
        if self._apiserver is None:
            raise ServerError("control plane: kube-apiserver before start()")
        return self._apiserver

    @property
    def controller_manager(self) -> KubeControllerManager:
        """The kube-controller-manager process."""
        if self._controller_manager is None:
            raise ServerError("control plane: kube-controller-manager before start()")
        return self._controller_manager

    @property
    def scheduler(self) -> KubeScheduler:
        """The kube-scheduler process."""
        if self._scheduler is None:
            raise ServerError("control plane: kube-scheduler before start()")
        return self._scheduler

    @property
    def server(self) -> str:
        """The API server URL, ``https://127.0.0.1:<port>``."""
        return self.apiserver.url

    @property
    def admin_token(self) -> str:
        """A bearer token of the admin identity (group ``system:masters``)."""
        return self.credentials.admin_token

    @property
    def ca_cert(self) -> Path:
        """The CA certificate that verifies the API server."""
        return self.credentials.ca_cert

    def log_paths(self) -> dict[str, Path]:
        """Return each started component's log file, by component name."""
        components = (self._etcd, self._apiserver, self._controller_manager, self._scheduler)
        return {c.name: c.log_path for c in components if c is not None}

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Generate the PKI, start the components, apply the CRDs and wait until all are ready.

        Raises:
            ServerError: A component did not become ready (the message has its log tail), or
                applying the CRDs failed.
        """
        if self._closed:
            raise ServerError("control plane: start() after close()")
        if self._etcd is not None:
            raise ServerError("control plane: start() twice")
        started = time.monotonic()
        atexit.register(self.close)  # a session that dies without finalizing still cleans up
        pki_dir = self.base_dir / "pki"
        pki_dir.mkdir(mode=0o700)
        self._credentials = generate_credentials(pki_dir)
        self._etcd = EtcdServer(
            self._etcd_binary, self.base_dir, startup_timeout=self.startup_timeout
        )
        self._etcd.start()
        self._apiserver = KubeAPIServer(
            self.bin_dir / "kube-apiserver",
            self.base_dir,
            self.credentials,
            self._etcd,
            startup_timeout=self.startup_timeout,
            extra_args=self._apiserver_args,
        )
        self._apiserver.start()
        write_kubeconfig(
            self.kubeconfig,
            server=self.server,
            ca_cert=self.credentials.ca_cert,
            user={
                "client-certificate": str(self.credentials.admin_cert),
                "client-key": str(self.credentials.admin_key),
            },
            user_name=ADMIN_USER,
        )
        if self.crds_dir is not None:
            self.apply_crds(self.crds_dir)
        self._controller_manager = KubeControllerManager(
            self.bin_dir / "kube-controller-manager",
            self.base_dir,
            self.credentials,
            self.kubeconfig,
            startup_timeout=self.startup_timeout,
            extra_args=self._controller_manager_args,
        )
        self._scheduler = KubeScheduler(
            self.bin_dir / "kube-scheduler",
            self.base_dir,
            self.credentials,
            self.kubeconfig,
            startup_timeout=self.startup_timeout,
            extra_args=self._scheduler_args,
        )
        # Started from this thread, not a pool: the parent-death signal fires when the thread
        # that started a process ends.
        self._controller_manager.start()
        self._scheduler.start()
        self.startup_seconds = time.monotonic() - started

    def ensure_running(self) -> None:
        """Start again any component that a (fault) test left stopped, etcd first.

        Raises:
            ServerError: A component did not become ready.
        """
        for component in (self.etcd, self.apiserver, self.controller_manager, self.scheduler):
            component.ensure_running()

    def apply_crds(self, crds_dir: Path, *, timeout: float = 60.0) -> None:
        """``kubectl apply`` a directory of CRDs and wait until they are Established.

        CRDs applied after the controller manager started are garbage-collected only after its
        next discovery resync (up to 30 s later).

        Args:
            crds_dir: The directory of CustomResourceDefinition manifests.
            timeout: Seconds to wait for the Established condition.

        Raises:
            KubectlError: The apply or the wait failed.
        """
        self.kubectl("apply", "-f", str(crds_dir))
        self.kubectl(
            "wait",
            "--for=condition=Established",
            f"--timeout={timeout:.0f}s",
            "-f",
            str(crds_dir),
            timeout=timeout + 30,
        )

    def close(self) -> None:
        """Stop every component and delete the temporary directory.

        Set ``ESPER_KEEP_SERVER_DIRS=1`` to keep the directory (logs, PKI, etcd data) for
        debugging. Calling close twice is harmless.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            for component in (
                self._scheduler,
                self._controller_manager,
                self._apiserver,
                self._etcd,
            ):
                if component is not None:
                    component.close()
        finally:
            if os.environ.get(KEEP_DIRS_ENV) != "1":
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def stop(self) -> None:
        """Same as :meth:`close` (the control plane is not restartable as a whole)."""
        self.close()

    def __enter__(self) -> ControlPlane:
        """Start the control plane; close it again if the start fails."""
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the control plane."""
        self.close()

    def __repr__(self) -> str:
        """Describe the control plane for test output."""
        server = self._apiserver.url if self._apiserver is not None else None
        return f"<ControlPlane server={server} dir={self.base_dir}>"

    # -- clients -------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Variables that point a client subprocess at this cluster as admin.

        Returns:
            ``{"KUBECONFIG": <admin kubeconfig>}``; merge it into ``os.environ`` for a subprocess.
        """
        return {"KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane.

        Args:
            *args: kubectl arguments, e.g. ``"get", "pods", "-n", "ns"``.
            input: Text for kubectl's standard input (``apply -f -``).
            check: Raise :class:`KubectlError` on a non-zero exit status.
            timeout: Seconds before the command is killed.
            kubeconfig: Another kubeconfig (e.g. a ServiceAccount's); the admin one by default.

        Returns:
            The completed process (text stdout and stderr).

        Raises:
            KubectlError: ``check`` is true and kubectl failed.
        """
        home = self.base_dir / "home"
        home.mkdir(exist_ok=True)
        config = kubeconfig if kubeconfig is not None else self.kubeconfig
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={config}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            # A private HOME: kubectl's discovery cache, no developer settings.
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C"},
        )
        if check and result.returncode != 0:
            raise KubectlError(args, result.returncode, result.stdout, result.stderr)
        return result

    def service_account_kubeconfig(
        self,
        namespace: str,
        service_account: str,
        *,
        path: Path | None = None,
        duration: str = "24h",
    ) -> Path:
        """Write a kubeconfig that authenticates as a ServiceAccount (``kubectl create token``).

        Args:
            namespace: The ServiceAccount's namespace (also the context's default namespace).
            service_account: The ServiceAccount's name; it must exist.
            path: Where to write it; under :attr:`base_dir` by default.
            duration: The token's lifetime (kubectl duration syntax).

        Returns:
            The kubeconfig path.

        Raises:
            KubectlError: The token could not be created (e.g. no such ServiceAccount).
        """
        token = self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        if path is None:
            path = self.base_dir / "kubeconfigs" / f"{namespace}.{service_account}.kubeconfig"
        return write_kubeconfig(
            path,
            server=self.server,
            ca_cert=self.credentials.ca_cert,
            user={"token": token},
            user_name=f"system:serviceaccount:{namespace}:{service_account}",
            namespace=namespace,
        )

    def wait_for_service_account(
        self, namespace: str, name: str = "default", *, timeout: float = 60.0
    ) -> None:
        """Wait until a ServiceAccount exists (the controller creates ``default`` per namespace).

        Pods are rejected by the ServiceAccount admission plugin until their account exists.

        Args:
            namespace: The namespace.
            name: The ServiceAccount.
            timeout: Seconds to wait.

        Raises:
            TimeoutError: It did not appear in time.
        """
        deadline = time.monotonic() + timeout
        while self.kubectl("get", "serviceaccount", name, "-n", namespace, check=False).returncode:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"ServiceAccount {namespace}/{name} did not appear within {timeout:.0f}s"
                )
            time.sleep(0.2)
