#!/usr/bin/env bash
# Build the MinIO server used by the S3 test fixtures (tests/servers/s3.py).
#
# Idempotent: the binary is built once into a cache outside the clone and reused afterwards
# (developers, CI and every worktree share it). The last line printed on stdout is always the
# path of the binary; build output goes to stderr.
#
#   scripts/build-minio.sh               build if missing, print the binary path
#   scripts/build-minio.sh --print-path  print where the binary lives (or would live); no build
#
# Environment:
#   ESPER_TOOLS_CACHE  cache root (default: $HOME/.cache/esper/tools)
#   GO                 the go command to use (default: go on PATH, then /usr/local/go/bin/go)
#
# MinIO is built from its Go module because the test machines reach package registries (the Go
# module proxy included) but not GitHub release downloads or Docker registries.
set -euo pipefail

# Pinned MinIO module version (a pseudo-version of the upstream master branch).
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
MINIO_MODULE="github.com/minio/minio"

cache_root="${ESPER_TOOLS_CACHE:-${HOME:?HOME is not set}/.cache/esper/tools}"
install_dir="${cache_root}/minio-${MINIO_VERSION}"
binary="${install_dir}/minio"

die() {
    echo "build-minio.sh: error: $*" >&2
    exit 1
}

case "${1:-}" in
    --print-path)
        echo "${binary}"
        exit 0
        ;;
    "") ;;
    *) die "unknown argument '$1' (usage: $0 [--print-path])" ;;
esac

if [[ -x "${binary}" ]]; then
    echo "${binary}"
    exit 0
fi

go_cmd="${GO:-}"
if [[ -z "${go_cmd}" ]]; then
    if command -v go >/dev/null 2>&1; then
        go_cmd="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
        go_cmd=/usr/local/go/bin/go
    else
        die "no Go toolchain found (install Go >= 1.24 or set GO=/path/to/go)"
    fi
fi

mkdir -p "${install_dir}"
echo "build-minio.sh: building ${MINIO_MODULE}@${MINIO_VERSION} into ${install_dir}" >&2
echo "build-minio.sh: a cold build takes several minutes on 2 cores" >&2

# Build into a scratch directory first so an interrupted build never leaves a partial binary at
# the cached path (which would make every later run think the build succeeded).
scratch="$(mktemp -d "${install_dir}/.build.XXXXXX")"
trap 'rm -rf "${scratch}"' EXIT
GOBIN="${scratch}" GOFLAGS="${GOFLAGS:--trimpath}" \
    "${go_cmd}" install "${MINIO_MODULE}@${MINIO_VERSION}" >&2 \
    || die "go install ${MINIO_MODULE}@${MINIO_VERSION} failed (see the output above)"

[[ -x "${scratch}/minio" ]] || die "go install succeeded but produced no ${scratch}/minio"
"${scratch}/minio" --version >/dev/null 2>&1 || die "the freshly built ${scratch}/minio does not run"
mv -f "${scratch}/minio" "${binary}"

echo "${binary}"
