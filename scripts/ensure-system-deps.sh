#!/usr/bin/env bash
# Make sure the system programs the test suite uses are present; install them with apt-get
# when running as root (CI), otherwise name the packages to install and fail.
#   postgresql      -> initdb / pg_ctl for the throwaway PostgreSQL
#   redis-server    -> the throwaway Redis
#   docker-compose  -> `docker-compose config` validates docker-compose.yml (no engine needed)
#   etcd-server     -> etcd of the test control plane (scripts/build-control-plane.sh)
#   openssl         -> the control plane's test certificates (tests/servers/kube.py)
#   shellcheck      -> actionlint checks the CI workflow's run scripts with it
#   go (>= 1.24)    -> builds MinIO from its Go module (scripts/build-minio.sh)
set -euo pipefail

missing=()
pg_bindir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    return 0
  fi
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
pg_bindir || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-system-deps: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "ensure-system-deps: missing Debian packages: ${missing[*]}" >&2
    echo "  install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

if ! command -v go >/dev/null 2>&1; then
  echo "ensure-system-deps: the Go toolchain (>= 1.24) is needed to build MinIO and the Kubernetes control plane for the tests" >&2
  exit 1
fi
