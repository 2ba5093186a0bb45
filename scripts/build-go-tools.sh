#!/usr/bin/env bash
# Build the deployment tools the suite checks the chart, the CI workflow and the kind config with:
# helm and actionlint from their Go modules at pinned releases, and deploy-check (a small
# program in tools/deploy-check that checks a kind config against kind's own v1alpha4 types
# and parses a Dockerfile with BuildKit's parser).
#
# Idempotent: each tool is built once into a cache directory keyed by its version and reused
# afterwards (developers, CI and every worktree share it). The last line printed on stdout is
# the path of the requested tool; build output goes to stderr.
#
#   scripts/build-go-tools.sh                     build every tool if missing; print nothing else
#   scripts/build-go-tools.sh TOOL                build TOOL if missing, print its path
#   scripts/build-go-tools.sh --print-path TOOL   print where TOOL lives (or would live); no build
#
# TOOL is one of: helm, actionlint, deploy-check.
#
# Environment:
#   ESPER_TOOLS_CACHE  cache root (default: $HOME/.cache/esper/tools)
#   GO                 the go command to use (default: go on PATH, then /usr/local/go/bin/go)
#
# Built from Go modules because the test machines reach package registries (the Go module proxy
# included) but not GitHub release downloads. Cold builds on 2 cores: docs/test-infrastructure.md.
set -euo pipefail

HELM_VERSION="v3.22.0"
# The Kubernetes minor helm v3.22 is built against (its k8s.io modules are v0.37): stamped in as
# helm's Makefile does, so `helm template` and `helm lint` assume Kubernetes 1.37, not 1.20.
HELM_KUBERNETES_MINOR="37"
ACTIONLINT_VERSION="v1.7.12"
TOOLS=(helm actionlint deploy-check)

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
cache_root="${ESPER_TOOLS_CACHE:-${HOME:?HOME is not set}/.cache/esper/tools}"

die() {
    echo "build-go-tools.sh: error: $*" >&2
    exit 1
}

binary_path() {
    case "$1" in
        helm) echo "${cache_root}/helm-${HELM_VERSION}-k8s1.${HELM_KUBERNETES_MINOR}/helm" ;;
        actionlint) echo "${cache_root}/actionlint-${ACTIONLINT_VERSION}/actionlint" ;;
        deploy-check)
            # Keyed by the module's content too: a change to the checker rebuilds it.
            local digest
            local dir="${repo_root}/tools/deploy-check"
            digest="$(cat "${dir}/go.mod" "${dir}/go.sum" "${dir}"/*.go | sha256sum | cut -c1-12)"
            echo "${cache_root}/deploy-check-${digest}/deploy-check"
            ;;
        *) die "unknown tool '$1' (one of: ${TOOLS[*]})" ;;
    esac
}

find_go() {
    if [[ -n "${GO:-}" ]]; then
        echo "${GO}"
    elif command -v go >/dev/null 2>&1; then
        command -v go
    elif [[ -x /usr/local/go/bin/go ]]; then
        echo /usr/local/go/bin/go
    else
        die "no Go toolchain found (install Go >= 1.26 or set GO=/path/to/go)"
    fi
}

build() {
    local tool="$1" target scratch start go_cmd
    target="$(binary_path "${tool}")"
    if [[ -x "${target}" ]]; then
        return 0
    fi
    go_cmd="$(find_go)"
    mkdir -p "$(dirname "${target}")"
    # Build into a scratch directory so an interrupted build never leaves a partial binary at
    # the cached path.
    scratch="$(mktemp -d "$(dirname "${target}")/.build.XXXXXX")"
    start=$(date +%s)
    echo "build-go-tools.sh: building ${tool} into $(dirname "${target}")" >&2
    case "${tool}" in
        helm)
            GOBIN="${scratch}" CGO_ENABLED=0 "${go_cmd}" install -trimpath \
                -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} \
                    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
                    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${HELM_KUBERNETES_MINOR} \
                    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
                    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${HELM_KUBERNETES_MINOR}" \
                "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
            ;;
        actionlint)
            GOBIN="${scratch}" CGO_ENABLED=0 "${go_cmd}" install -trimpath \
                -ldflags "-s -w -X github.com/rhysd/actionlint.version=${ACTIONLINT_VERSION}" \
                "github.com/rhysd/actionlint/cmd/actionlint@${ACTIONLINT_VERSION}" >&2
            ;;
        deploy-check)
            (cd "${repo_root}/tools/deploy-check" && CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath" \
                "${go_cmd}" build -ldflags "-s -w" -o "${scratch}/deploy-check" .) >&2
            ;;
    esac
    [[ -x "${scratch}/${tool}" ]] || { rm -rf "${scratch}"; die "go build of ${tool} failed (see above)"; }
    mv -f "${scratch}/${tool}" "${target}"
    rm -rf "${scratch}"
    echo "build-go-tools.sh: built ${tool} in $(($(date +%s) - start)) s" >&2
}

case "${1:-}" in
    "")
        for tool in "${TOOLS[@]}"; do
            build "${tool}"
        done
        ;;
    --print-path)
        [[ $# -eq 2 ]] || die "usage: $0 --print-path TOOL"
        binary_path "$2"
        ;;
    -*) die "unknown option '$1' (usage: $0 [--print-path] [TOOL])" ;;
    *)
        [[ $# -eq 1 ]] || die "usage: $0 [--print-path] [TOOL]"
        build "$1"
        binary_path "$1"
        ;;
esac
