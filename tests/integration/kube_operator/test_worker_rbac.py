"""The workers' ServiceAccount may do nothing on the API server (reliability row rbac).

Job pods (compile, benchmark, training) run as the ServiceAccount the Helm chart creates in each
worker namespace (helm/esper/templates/workers.yaml): no Role, no token mounted, since workers
talk to Urza and never to the Kubernetes API. Here that ServiceAccount is rendered by the real
``helm template`` and applied to the real API server next to the operator's RBAC
(operator/deploy/rbac.yaml), then ``kubectl auth can-i --as`` answers for it:

- a table of verbs on the resources that matter: every answer is "no";
- ``auth can-i --list``: only what the API server grants every authenticated user;
- a compile Job as the operator builds it is accepted by the API server (``--dry-run=server``)
  and names that account, with no token mounted.

The operator's own table is in test_lifecycle.py.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from esper.contracts.kernel import KernelTarget
from esper_operator import manifests
from esper_operator.manifests import Owner
from esper_operator.settings import OperatorSettings
from tests.servers.kube import ControlPlane
from tests.support.helm import Helm
from tests.support.reliability import note_served

pytestmark = [pytest.mark.timeout(300), pytest.mark.reliability("rbac")]

WORKER_ACCOUNT = "esper-worker"
"""The chart's default ``workers.serviceAccountName``."""

# Everything a worker pod could want to abuse in its namespace, or in the cluster.
FORBIDDEN = [
    (verb, resource)
    for resource in (
        "pods",
        "jobs.batch",
        "secrets",
        "configmaps",
        "blueprints.esper.dev",
        "kernelartifacts.esper.dev",
        "morphogeneticruns.esper.dev",
    )
    for verb in ("get", "list", "watch", "create", "patch", "delete")
] + [
    ("create", "pods/exec"),
    ("get", "pods/log"),
    ("update", "morphogeneticruns.esper.dev/status"),
    ("create", "serviceaccounts/token"),
    ("get", "serviceaccounts"),
    ("create", "events"),
    ("create", "events.events.k8s.io"),
    ("get", "leases.coordination.k8s.io"),
    ("update", "leases.coordination.k8s.io"),
    ("patch", "kopfpeerings.kopf.dev"),
    ("create", "deployments.apps"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"),
    ("list", "namespaces"),
    ("get", "nodes"),
]

# What the API server's default ClusterRoles give every authenticated user (system:basic-user,
# system:discovery, system:public-info-viewer and the read access to ClusterTrustBundles, which
# hold public CA certificates), plus what system:service-account-issuer-discovery gives every
# ServiceAccount (the issuer's OIDC discovery document and public keys): asking who one is and
# what one may do, and reading discovery and health endpoints. Rows as (resource, non-resource
# URL, verbs) from `kubectl auth can-i --list`.
DEFAULT_RULES = {
    ("selfsubjectreviews.authentication.k8s.io", "", "[create]"),
    ("selfsubjectaccessreviews.authorization.k8s.io", "", "[create]"),
    ("selfsubjectrulesreviews.authorization.k8s.io", "", "[create]"),
    ("", "[/api/*]", "[get]"),
    ("", "[/api]", "[get]"),
    ("", "[/apis/*]", "[get]"),
    ("", "[/apis]", "[get]"),
    ("", "[/healthz]", "[get]"),
    ("", "[/livez]", "[get]"),
    ("", "[/openapi/*]", "[get]"),
    ("", "[/openapi]", "[get]"),
    ("", "[/readyz]", "[get]"),
    ("", "[/version/]", "[get]"),
    ("", "[/version]", "[get]"),
    ("clustertrustbundles.certificates.k8s.io", "", "[get list watch]"),
    ("", "[/.well-known/openid-configuration/]", "[get]"),
    ("", "[/.well-known/openid-configuration]", "[get]"),
    ("", "[/openid/v1/jwks/]", "[get]"),
    ("", "[/openid/v1/jwks]", "[get]"),
}


@pytest.fixture(scope="module")
def worker_namespace(
    control_plane: ControlPlane,
    operator_kubeconfig: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """A namespace holding the chart's worker objects, with the operator's RBAC installed.

    The namespace is this module's own, deleted afterwards; the chart is rendered for it and
    its workers.yaml applied as ``helm install`` would.
    """
    del operator_kubeconfig  # requested so the operator's ClusterRole and binding are installed
    namespace = f"worker-rbac-{secrets.token_hex(3)}"
    control_plane.kubectl("create", "namespace", namespace)
    helm = Helm(tmp_path_factory.mktemp("helm-home"))
    rendered = helm.run(
        "template", "esper", "helm/esper", "--namespace", namespace,
        "--set", f"workers.namespaces={{{namespace}}}",
        "--show-only", "templates/workers.yaml",
    ).stdout  # fmt: skip
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    accounts = [doc for doc in objects if doc["kind"] == "ServiceAccount"]
    assert [account["metadata"]["name"] for account in accounts] == [WORKER_ACCOUNT]
    assert accounts[0]["automountServiceAccountToken"] is False
    # workers.yaml holds no Role or binding: the account gets nothing from the chart.
    assert sorted({doc["kind"] for doc in objects}) == ["Secret", "ServiceAccount"]
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rendered, timeout=30)
    control_plane.wait_for_service_account(namespace, WORKER_ACCOUNT)
    yield namespace
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def _as_worker(namespace: str) -> str:
    return f"--as=system:serviceaccount:{namespace}:{WORKER_ACCOUNT}"


@pytest.mark.parametrize(("verb", "resource"), FORBIDDEN, ids=[" ".join(p) for p in FORBIDDEN])
def test_worker_service_account_can_do_nothing(
    control_plane: ControlPlane, worker_namespace: str, verb: str, resource: str
) -> None:
    result = control_plane.kubectl(
        "auth", "can-i", verb, resource, "-n", worker_namespace, _as_worker(worker_namespace),
        check=False,
    )  # fmt: skip
    # can-i exits 0 with "yes" or 1 with "no"; anything else is an error, not an answer.
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), (result.returncode, result.stdout, result.stderr)
    note_served()
    assert answer == "no", result.stderr
    assert result.returncode == 1


def test_worker_service_account_holds_only_the_defaults_of_every_user(
    control_plane: ControlPlane, worker_namespace: str
) -> None:
    result = control_plane.kubectl(
        "auth", "can-i", "--list", "-n", worker_namespace, _as_worker(worker_namespace)
    )
    note_served()
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["Resources", "Non-Resource", "URLs", "Resource", "Names", "Verbs"]
    # Columns start where their headings do; a non-resource row leaves Resources blank.
    urls_at = lines[0].index("Non-Resource URLs")
    names_at = lines[0].index("Resource Names")
    verbs_at = lines[0].index("Verbs")
    rules = set()
    for line in lines[1:]:
        resource, urls = line[:urls_at].strip(), line[urls_at:names_at].strip()
        names, verbs = line[names_at:verbs_at].strip(), line[verbs_at:].strip()
        assert names == "[]", line
        rules.add((resource, "" if urls == "[]" else urls, verbs))
    assert rules == DEFAULT_RULES, result.stdout
    # No binding anywhere names the account itself: all it holds comes from its groups.
    bindings = json.loads(
        control_plane.kubectl("get", "clusterrolebindings,rolebindings", "-A", "-o", "json").stdout
    )["items"]
    naming = [
        binding["metadata"]["name"]
        for binding in bindings
        for subject in binding.get("subjects") or []
        if subject.get("kind") == "ServiceAccount" and subject.get("name") == WORKER_ACCOUNT
    ]
    assert naming == []


def test_operator_jobs_run_as_the_worker_account_without_a_token(
    control_plane: ControlPlane, worker_namespace: str
) -> None:
    settings = OperatorSettings(
        namespaces=[worker_namespace], worker_service_account=WORKER_ACCOUNT
    )
    owner = Owner(
        api_version="esper.dev/v1alpha1",
        kind="Blueprint",
        name="rbac-probe",
        uid="00000000-0000-0000-0000-000000000001",
        namespace=worker_namespace,
    )
    job = manifests.compile_job(
        owner, "ab" * 32, KernelTarget.parse("cpu:fp32:C=16,T=8:b=1,4"), settings
    )
    result = control_plane.kubectl(
        "create", "--dry-run=server", "-o", "json", "-n", worker_namespace, "-f", "-",
        input=json.dumps(job), timeout=30,
    )  # fmt: skip
    accepted = json.loads(result.stdout)
    pod = accepted["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == WORKER_ACCOUNT
    assert pod["automountServiceAccountToken"] is False
    assert not any("serviceaccount" in str(volume).lower() for volume in pod.get("volumes", []))
