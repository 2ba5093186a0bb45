"""Shared values of the operator's unit tests: valid targets, hashes, owners, DNS patterns."""

import re

from esper_operator.manifests import Owner

CPU_TARGET = "cpu:fp32:C=64"
CUDA_TARGET = "cuda@9.0:fp16:C=64"
BLUEPRINT_HASH = "ab" * 32
OTHER_HASH = "cd" * 32

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
"""RFC 1123 label, as Kubernetes validates names of Jobs, ConfigMaps and label values."""

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
"""RFC 1123 subdomain, as Kubernetes validates names of Events and custom resources."""


def is_dns_label(text: str) -> bool:
    return len(text) <= 63 and DNS_LABEL.match(text) is not None


def is_dns_subdomain(text: str) -> bool:
    return len(text) <= 253 and DNS_SUBDOMAIN.match(text) is not None


def make_owner(
    kind: str = "Blueprint",
    name: str = "residual-mlp",
    uid: str = "uid-1",
    namespace: str = "esper",
) -> Owner:
    return Owner(
        api_version="esper.dev/v1alpha1", kind=kind, name=name, uid=uid, namespace=namespace
    )
