# syntax=docker/dockerfile:1
# check=error=true
#
# Esper's container images: builder stages that make a virtual environment each, and two final
# stages that receive nothing but that environment (docs/image.md says what and why).
#
#   control  ghcr.io/esper-dev/esper:<version>         the operator and Urza; no torch
#   worker   ghcr.io/esper-dev/esper-worker:<version>  compile, benchmark and training Jobs
#
#   docker build --target control -t ghcr.io/esper-dev/esper:0.1.0 .
#   docker build --target worker -t ghcr.io/esper-dev/esper-worker:0.1.0 .
#
# Every stage starts from the same Python image: a venv's interpreter is a link to the base
# image's /usr/local/bin/python3.12, so the builder and the final stages must hold the same
# Python. Release builds should pin it by digest (python:3.12-slim-bookworm@sha256:...).

# ---- builder: uv, the lock and the sources ------------------------------------------------
FROM python:3.12-slim-bookworm AS builder
# uv uses the image's Python (never a downloaded one) and copies from its cache mount, which is
# another filesystem than the venv (hard links cannot cross it).
ENV PYTHONDONTWRITEBYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_CACHE_DIR=/root/.cache/uv
# Pinned, so a rebuild installs the same way; uv and pip stay in the builder stages.
RUN pip install --no-cache-dir --root-user-action=ignore uv==0.13.9
WORKDIR /src
# Only what building the distribution reads: its metadata (README.md is its long description),
# the lock, and the two packages. Tests, docs and benchmarks stay out of the image.
COPY pyproject.toml README.md ./
COPY requirements/dev.lock requirements/dev.lock
COPY src/esper src/esper
COPY operator/esper_operator operator/esper_operator

# ---- control-venv: the operator's and Urza's packages, no torch ----------------------------
FROM builder AS control-venv
# The lock pins every extra (dev included) for CPython 3.12 on x86_64 Linux. As constraints it
# fixes the versions of what these extras need and installs nothing more. `uv venv` without
# --seed puts no pip in the venv. The bytecode is written here, because the final images run
# with a read-only root filesystem; unchecked-hash .pyc files stay valid whatever timestamps a
# layer export gives the sources, and nothing edits the sources in an image.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv venv --python /usr/local/bin/python3.12 /opt/esper/venv \
    && uv pip install --python /opt/esper/venv/bin/python \
        --constraints requirements/dev.lock --build-constraints requirements/dev.lock \
        ".[server,operator]" \
    && /opt/esper/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        /opt/esper/venv/lib/python3.12/site-packages

# ---- worker-venv: the training stack (torch with its CUDA libraries) and Urza's client side ---
FROM builder AS worker-venv
# `esper tezzeret compile` and `esper urabrask bench` need train; `esper run --urza URL --bus
# redis://...` imports the embedded stack too (esper.embedded -> esper.urza.service), so server.
# torch comes from PyPI's default wheels, which carry the CUDA runtime as nvidia-* wheels.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv venv --python /usr/local/bin/python3.12 /opt/esper/venv \
    && uv pip install --python /opt/esper/venv/bin/python \
        --constraints requirements/dev.lock --build-constraints requirements/dev.lock \
        ".[server,train]" \
    && /opt/esper/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        /opt/esper/venv/lib/python3.12/site-packages

# ---- runtime: what both final images share -------------------------------------------------
FROM python:3.12-slim-bookworm AS runtime
# The package version (src/esper/_version.py; a unit test keeps them equal). CI may pass it.
ARG VERSION=0.1.0
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/esper-dev/esper" \
      org.opencontainers.image.url="https://github.com/esper-dev/esper" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.authors="The Esper developers"
# - A fixed numeric user: the operator's Job pods run as 1000:1000, and Kubernetes can check
#   runAsNonRoot only against a numeric USER. Its home is /tmp, the one writable path.
# - The base image's own pip goes: nothing installs packages into a running image.
# - The standard library ships without bytecode (the python images delete it); compile it here,
#   since a read-only root filesystem would have every process recompile it in memory.
RUN groupadd --gid 1000 esper \
    && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin esper \
    && python -m pip uninstall --yes --quiet --root-user-action=ignore pip \
    && rm -f /usr/local/bin/pip /usr/local/bin/pip3 /usr/local/bin/pip3.12 \
    && python -m compileall -q -j 0 --invalidation-mode unchecked-hash /usr/local/lib/python3.12
# Everything a process may write goes under /tmp (an emptyDir in the chart's and the operator's
# pods, `--tmpfs /tmp` with docker run): home, Esper's data directory (a training Job points
# ESPER_HOME at its own volume), and the caches of torch.compile, Triton and matplotlib.
ENV PATH=/opt/esper/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/esper/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    ESPER_HOME=/tmp/esper \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/torchinductor \
    TRITON_HOME=/tmp \
    TRITON_CACHE_DIR=/tmp/.cache/triton
# No HEALTHCHECK: Kubernetes ignores it; the chart's probes (the operator's /healthz, Urza's
# HTTP endpoint) do that job, and Jobs run to completion instead of serving.

# ---- control: the operator and Urza ---------------------------------------------------------
FROM runtime AS control
LABEL org.opencontainers.image.title="esper" \
      org.opencontainers.image.description="Esper's control plane: the Kubernetes operator and Urza, the artifact library (no torch)."
COPY --from=control-venv /opt/esper/venv /opt/esper/venv
USER 1000:1000
# The chart always gives a command (esper operator, esper urza serve); without one the image
# prints the command's help. Exec form: esper is PID 1 and receives SIGTERM itself.
ENTRYPOINT ["esper"]
CMD ["--help"]

# ---- worker: compile, benchmark and training Jobs --------------------------------------------
FROM runtime AS worker
LABEL org.opencontainers.image.title="esper-worker" \
      org.opencontainers.image.description="Esper's worker: Tezzeret compile, Urabrask benchmark and training Jobs (torch with CUDA)."
# Run-time packages, not build tools:
# - gcc, g++, libc6-dev: torch.compile is itself a compiler that calls the system's. Inductor
#   builds the C++ it writes for CPU targets with g++, and Triton builds its CUDA launcher with
#   gcc on first use; Tezzeret compiles forward+backward for every kernel's compile cache.
# - dataset-fashion-mnist: the offline Fashion-MNIST files (/usr/share/datasets/fashion-mnist).
RUN apt-get update \
    && apt-get install --yes --no-install-recommends dataset-fashion-mnist g++ gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# What the NVIDIA container toolkit mounts into a GPU container: the compute libraries
# (libcuda) and nvidia-smi. Which GPUs stays the device plugin's choice (never "all" here).
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=worker-venv /opt/esper/venv /opt/esper/venv
USER 1000:1000
# The operator's Jobs always give `esper ...` as the command; see the control stage.
ENTRYPOINT ["esper"]
CMD ["--help"]
