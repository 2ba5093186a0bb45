#!/usr/bin/env bash
# Build the envtest-style control plane used by the operator tests (tests/servers/kube.py):
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from the Go module in
# tools/control-plane (k8s.io/kubernetes at one pinned release), and check etcd.
#
# Idempotent: the binaries are built once into a cache directory keyed by the Kubernetes version
# and reused afterwards (developers, CI and every worktree share it). The last line printed on
# stdout is always the directory holding the binaries; build output goes to stderr.
#
#   scripts/build-control-plane.sh               build if missing, print the directory
#   scripts/build-control-plane.sh --print-path  print where the binaries live; no build
#
# Environment:
#   KUBEBUILDER_ASSETS  a directory with existing envtest binaries (kube-apiserver, etcd, kubectl):
#                       used as it is, nothing is built
#   ESPER_TOOLS_CACHE   cache root (default: $HOME/.cache/esper/tools)
#   GO                  the go command to use (default: go on PATH, then /usr/local/go/bin/go)
#
# etcd is Debian's etcd-server (3.4), which this Kubernetes release still works with; the fixtures
# find it on PATH. A cold build takes about 12 minutes on 2 cores (docs/test-infrastructure.md).
set -euo pipefail

KUBERNETES_VERSION="v1.37.2"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
module_dir="${repo_root}/tools/control-plane"
cache_root="${ESPER_TOOLS_CACHE:-${HOME:?HOME is not set}/.cache/esper/tools}"
install_dir="${cache_root}/control-plane-${KUBERNETES_VERSION}"

die() {
    echo "build-control-plane.sh: error: $*" >&2
    exit 1
}

case "${1:-}" in
    --print-path)
        echo "${KUBEBUILDER_ASSETS:-${install_dir}}"
        exit 0
        ;;
    "") ;;
    *) die "unknown argument '$1' (usage: $0 [--print-path])" ;;
esac

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    for name in kube-apiserver kubectl; do
        [[ -x "${KUBEBUILDER_ASSETS}/${name}" ]] \
            || die "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} has no executable ${name}"
    done
    echo "${KUBEBUILDER_ASSETS}"
    exit 0
fi

missing=()
for name in "${BINARIES[@]}"; do
    [[ -x "${install_dir}/${name}" ]] || missing+=("${name}")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "${install_dir}"
    exit 0
fi

command -v etcd >/dev/null 2>&1 \
    || die "etcd is not on PATH (install the Debian package etcd-server: scripts/ensure-system-deps.sh)"

go_cmd="${GO:-}"
if [[ -z "${go_cmd}" ]]; then
    if command -v go >/dev/null 2>&1; then
        go_cmd="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
        go_cmd=/usr/local/go/bin/go
    else
        die "no Go toolchain found (install Go >= 1.26 or set GO=/path/to/go)"
    fi
fi

mkdir -p "${install_dir}"
echo "build-control-plane.sh: building ${missing[*]} (Kubernetes ${KUBERNETES_VERSION}) into ${install_dir}" >&2
echo "build-control-plane.sh: a cold build takes about 12 minutes on 2 cores" >&2

# The version stamped into the binaries, so `kubectl version` and the API server's /version
# report the pinned release rather than v0.0.0-master.
minor="${KUBERNETES_VERSION#v1.}"
minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=clean"
done

# Build into a scratch directory first so an interrupted build never leaves a partial binary at
# the cached path (which would make every later run think the build succeeded).
scratch="$(mktemp -d "${install_dir}/.build.XXXXXX")"
trap 'rm -rf "${scratch}"' EXIT
for name in "${missing[@]}"; do
    start=$(date +%s)
    (cd "${module_dir}" && CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath" \
        "${go_cmd}" build -ldflags "${ldflags}" -o "${scratch}/${name}" "./${name}") >&2 \
        || die "go build of ${name} failed (see the output above)"
    "${scratch}/${name}" --help >/dev/null 2>&1 || die "the freshly built ${name} does not run"
    mv -f "${scratch}/${name}" "${install_dir}/${name}"
    echo "build-control-plane.sh: built ${name} in $(($(date +%s) - start)) s" >&2
done

echo "${install_dir}"
