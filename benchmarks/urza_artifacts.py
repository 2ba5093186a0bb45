"""Urza artifact upload and download MB/s through the S3 server (MinIO) and the local store.

Measures each transfer two ways, side by side in one run:

- ``http``: through a real ``esper urza serve`` in its own process, with the typed client
  (``UrzaClient.upload_artifact`` / ``download_artifact``, which hash and verify the bytes);
  for S3 also the presigned-URL download (``artifact_link`` + a direct GET from MinIO +
  verification), which bypasses Urza for the bytes;
- ``blob``: straight at the blob-store layer (``S3BlobStore`` / ``LocalBlobStore`` ``put`` and
  ``get``), so the cost of the HTTP API shows as the difference.

Every repetition uploads fresh random bytes (the stores are content addressed and skip known
blobs) to a fresh kernel in phase Compiling. 1 MB = 10**6 bytes.

Rerun: ``python benchmarks/urza_artifacts.py`` (see ``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import (
    S3Server,
    UrzaServer,
    environment,
    filesystem_of,
    format_table,
    log,
    temporary_directory,
    write_result,
)

from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import KernelPhase, KernelTarget
from esper.contracts.urza_api import PhaseChange
from esper.urza.blobs import BlobStore, LocalBlobStore, S3BlobStore
from esper.urza.client import UrzaClient

NAME = "urza_artifacts"
MIB = 1024 * 1024
DIRECT_BUCKET = "esper-bench-direct"
"""Bucket of the blob-layer measurements (Urza's own uses the server's default bucket)."""

BLUEPRINT = BlueprintIR.model_validate(
    {
        "name": "artifact-bench",
        "description": "The blueprint every artifact benchmark kernel compiles.",
        "input": {"layout": "features", "shape": ["C"]},
        "nodes": [
            {"id": "up", "op": "linear", "inputs": ["input"], "params": {"outFeatures": 256}},
            {"id": "act", "op": "gelu", "inputs": ["up"]},
            {
                "id": "down",
                "op": "linear",
                "inputs": ["act"],
                "params": {"outFeatures": "C", "init": "zeros"},
            },
            {"id": "sum", "op": "add", "inputs": ["input", "down"]},
        ],
        "output": "sum",
    }
)


class IntegrityMismatchError(RuntimeError):
    """Raised when bytes read back differ from the bytes written."""


@dataclass
class Store:
    """One store under test, reached through Urza's HTTP API and directly.

    Attributes:
        name: ``s3`` or ``local``.
        client: The typed client of the Urza that uses this store.
        blobs: The same kind of store, used directly (a separate bucket or directory).
        blueprint_hash: The blueprint the benchmark's kernels compile.
        direct: Plain HTTP client (own connection pool) for presigned-URL downloads.
        kernels: How many kernels were created so far (each target binds a new ``C``).
    """

    name: str
    client: UrzaClient
    blobs: BlobStore
    blueprint_hash: str
    direct: httpx.Client
    kernels: int = 0

    def compiling_kernel(self) -> str:
        """Register a fresh kernel and move it to Compiling, ready for an upload.

        Returns:
            Its id.
        """
        self.kernels += 1
        target = KernelTarget(device="cpu", bindings={"C": 1000 + self.kernels})
        kernel = self.client.create_kernel(self.blueprint_hash, target, tags=["artifact-bench"])
        self.client.change_phase(kernel.id, PhaseChange(phase=KernelPhase.COMPILING))
        return kernel.id


@dataclass
class Samples:
    """Timings of one (path, store, operation, size).

    Attributes:
        seconds: Wall seconds per repetition.
    """

    seconds: list[float] = field(default_factory=list)


def _timed(action: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def _check(expected: bytes, actual: object, what: str) -> None:
    if actual != expected:
        raise IntegrityMismatchError(f"{what}: the bytes read back differ from those written")


def _presigned_download(store: Store, kernel_id: str) -> bytes:
    link = store.client.artifact_link(kernel_id)
    response = store.direct.get(link.url)
    response.raise_for_status()
    if hashlib.sha256(response.content).hexdigest() != link.sha256:
        raise IntegrityMismatchError(f"kernel {kernel_id}: presigned download hash mismatch")
    return response.content


def one_round(store: Store, data: bytes) -> list[tuple[str, str, float]]:
    """Move one payload every way: HTTP up and down (and presigned for S3), then blob put/get.

    Args:
        store: The store under test.
        data: Fresh bytes (not stored anywhere yet).

    Returns:
        (path, operation, seconds) of every transfer.
    """
    timings: list[tuple[str, str, float]] = []
    kernel_id = store.compiling_kernel()
    seconds, _ = _timed(lambda: store.client.upload_artifact(kernel_id, data))
    timings.append(("http", "upload", seconds))
    seconds, value = _timed(lambda: store.client.download_artifact(kernel_id))
    _check(data, value, f"{store.name} http download")
    timings.append(("http", "download", seconds))
    if store.name == "s3":
        seconds, value = _timed(lambda: _presigned_download(store, kernel_id))
        _check(data, value, "s3 presigned download")
        timings.append(("http", "download_presigned", seconds))
    digest = hashlib.sha256(data).hexdigest()
    seconds, _ = _timed(lambda: store.blobs.put(data, digest))
    timings.append(("blob", "upload", seconds))
    seconds, value = _timed(lambda: store.blobs.get(digest))
    _check(data, value, f"{store.name} blob get")
    timings.append(("blob", "download", seconds))
    return timings


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start MinIO and two Urzas, move every payload, and summarize.

    Args:
        args: The parsed command line.

    Returns:
        The results document's ``results`` part.
    """
    samples: dict[tuple[str, str, str, int], Samples] = {}
    with ExitStack() as stack:
        work = stack.enter_context(temporary_directory("esper-bench-artifacts-"))
        log("starting MinIO")
        minio = stack.enter_context(S3Server())
        direct = minio.create_bucket(DIRECT_BUCKET)
        s3_settings = {
            "ESPER_URZA_BLOB_STORE": "s3",
            "ESPER_URZA_S3_ENDPOINT_URL": minio.endpoint_url,
            "ESPER_URZA_S3_BUCKET": minio.default_bucket,
            "ESPER_URZA_S3_REGION": minio.region,
            "ESPER_URZA_S3_ACCESS_KEY_ID": minio.access_key,
            "ESPER_URZA_S3_SECRET_ACCESS_KEY": minio.secret_key,
        }
        stores: list[Store] = []
        for name in args.stores:
            log(f"starting esper urza serve with the {name} blob store")
            settings = {
                "ESPER_URZA_DATABASE_URL": f"sqlite:///{work / f'{name}.sqlite'}",
                **(
                    s3_settings
                    if name == "s3"
                    else {
                        "ESPER_URZA_BLOB_STORE": "local",
                        "ESPER_URZA_ARTIFACT_DIR": str(work / "urza-artifacts"),
                    }
                ),
            }
            server = stack.enter_context(UrzaServer(settings))
            client = stack.enter_context(UrzaClient(server.url, token=server.token, timeout=120))
            blobs: BlobStore = (
                S3BlobStore(
                    direct.bucket,
                    endpoint_url=direct.endpoint_url,
                    access_key_id=direct.access_key,
                    secret_access_key=direct.secret_key,
                    region=direct.region,
                )
                if name == "s3"
                else LocalBlobStore(work / "direct-artifacts")
            )
            direct_http = stack.enter_context(httpx.Client(timeout=120.0))
            blueprint_hash = client.submit_blueprint(BLUEPRINT).hash
            stores.append(Store(name, client, blobs, blueprint_hash, direct_http))
        log("warming up (1 MiB each way, not recorded)")
        for store in stores:
            one_round(store, os.urandom(MIB))
        for size in args.sizes:
            for repetition in range(args.repetitions):
                # Alternate the stores' order so drift in the machine's load hits both alike.
                ordered = stores if repetition % 2 == 0 else stores[::-1]
                for store in ordered:
                    for path, op, seconds in one_round(store, os.urandom(size * MIB)):
                        key = (path, store.name, op, size)
                        samples.setdefault(key, Samples()).seconds.append(seconds)
            log(f"{size} MiB done")
        places = {
            "minio_data_filesystem": filesystem_of(minio.data_dir),
            "local_store_filesystem": filesystem_of(work),
        }
    rows = [_row(key, value) for key, value in samples.items()]
    return {"transfers": rows, "http_over_blob": _overheads(rows), "storage": places}


def _row(key: tuple[str, str, str, int], samples: Samples) -> dict[str, Any]:
    path, store, op, size = key
    rates = [size * MIB / seconds / 1e6 for seconds in samples.seconds]
    return {
        "path": path,
        "store": store,
        "op": op,
        "size_mib": size,
        "repetitions": len(rates),
        "mb_per_s_median": round(statistics.median(rates), 1),
        "mb_per_s_min": round(min(rates), 1),
        "mb_per_s_max": round(max(rates), 1),
        "seconds": [round(seconds, 4) for seconds in samples.seconds],
    }


def _overheads(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    blob = {
        (row["store"], row["op"], row["size_mib"]): row for row in rows if row["path"] == "blob"
    }
    result = []
    for row in rows:
        if row["path"] != "http" or row["op"] == "download_presigned":
            continue
        direct = blob.get((row["store"], row["op"], row["size_mib"]))
        if direct is None:
            continue
        result.append(
            {
                "store": row["store"],
                "op": row["op"],
                "size_mib": row["size_mib"],
                "http_mb_per_s": row["mb_per_s_median"],
                "blob_mb_per_s": direct["mb_per_s_median"],
                "http_share_of_blob_rate": round(
                    row["mb_per_s_median"] / direct["mb_per_s_median"], 2
                ),
            }
        )
    return result


def table(results: dict[str, Any]) -> str:
    """Render the transfers as a readable table.

    Args:
        results: What :func:`run` returned.

    Returns:
        The table.
    """
    rows = sorted(
        results["transfers"],
        key=lambda row: (row["store"], row["op"], row["size_mib"], row["path"]),
    )
    return format_table(
        ["store", "op", "MiB", "path", "reps", "median MB/s", "min MB/s", "max MB/s"],
        [
            [
                row["store"],
                row["op"],
                row["size_mib"],
                row["path"],
                row["repetitions"],
                row["mb_per_s_median"],
                row["mb_per_s_min"],
                row["mb_per_s_max"],
            ]
            for row in rows
        ],
    )


def _sizes(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1 or max(values) > 256:
        raise argparse.ArgumentTypeError(f"expected sizes in MiB within 1..256, got {text!r}")
    return values


def _stores(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names or set(names) - {"s3", "local"}:
        raise argparse.ArgumentTypeError(f"stores are s3 and local, got {text!r}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: The arguments (``sys.argv[1:]`` when None).

    Returns:
        The options.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=_sizes, default=[1, 16, 64], help="payload sizes in MiB (1,16,64)"
    )
    parser.add_argument(
        "--repetitions", type=int, default=5, help="transfers per size, store and path (5)"
    )
    parser.add_argument(
        "--stores", type=_stores, default=["s3", "local"], help="blob stores (s3,local)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result file (benchmarks/results/urza_artifacts.json)",
    )
    args = parser.parse_args(argv)
    if args.repetitions < 1:
        parser.error("--repetitions must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its table and write its JSON.

    Args:
        argv: The arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit status.
    """
    args = parse_args(argv)
    env = environment()
    started = time.perf_counter()
    results = run(args)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    parameters = {
        "sizes_mib": args.sizes,
        "repetitions": args.repetitions,
        "stores": args.stores,
        "metadata_database": "sqlite (one per Urza)",
        "mb": "10**6 bytes",
        "page_cache": "warm: downloads follow their upload; caches are not dropped",
    }
    path = write_result(NAME, parameters, results, out=args.out, env=env)
    print(table(results))
    print()
    print(
        format_table(
            ["store", "op", "MiB", "http MB/s", "blob MB/s", "http/blob"],
            [
                [
                    row["store"],
                    row["op"],
                    row["size_mib"],
                    row["http_mb_per_s"],
                    row["blob_mb_per_s"],
                    row["http_share_of_blob_rate"],
                ]
                for row in results["http_over_blob"]
            ],
        )
    )
    print(f"wrote {path} (run took {results['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
