"""Urza kernel-query latency and throughput on PostgreSQL and SQLite, side by side.

Seeds the same library into both databases (by default 200 blueprints x 5 targets = 1000
kernels in every phase, the Validated and Rejected ones with benchmark reports), serves each with
a real ``esper urza serve`` in its own process, and drives both with the same mix of
``GET /v1/kernels/{id}`` and filtered lists
(``GET /v1/kernels?phase=Validated&target=...&maxLatencyMs=...``) at concurrency 1, 16 and 64
(requests in flight, asyncio + ``httpx.AsyncClient``) for a fixed duration each. The two
backends alternate level by level, so a change in the machine's load hits both alike.

Rerun: ``python benchmarks/urza_queries.py`` (see ``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import random
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from _common import (
    PostgresServer,
    UrzaServer,
    environment,
    format_table,
    log,
    process_tree_cpu_seconds,
    summarize,
    temporary_directory,
    write_result,
)
from sqlalchemy import Integer, event, insert, select, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from esper.contracts.blueprint import BlueprintIR
from esper.contracts.kernel import (
    BenchmarkReport,
    KernelPhase,
    KernelTarget,
    LatencyMeasurement,
    Verdict,
)
from esper.contracts.urza_api import KernelCreate, PhaseChange
from esper.urza.blobs import LocalBlobStore
from esper.urza.client import UrzaClient
from esper.urza.database import make_engine, migrate, session_factory
from esper.urza.models import Base
from esper.urza.repository import UrzaRepository

NAME = "urza_queries"

TARGETS = (
    "cpu:fp32:C=64",
    "cpu:fp32:C=256",
    "cuda@8.0:fp16:C=512",
    "cuda@9.0:bf16:C=256",
    "cuda@9.0:bf16:C=1024",
)
"""The five compile targets every blueprint is registered for."""

PHASE_WEIGHTS: tuple[tuple[KernelPhase, float], ...] = (
    (KernelPhase.PENDING, 0.08),
    (KernelPhase.COMPILING, 0.04),
    (KernelPhase.COMPILED, 0.08),
    (KernelPhase.VALIDATING, 0.05),
    (KernelPhase.VALIDATED, 0.55),
    (KernelPhase.REJECTED, 0.12),
    (KernelPhase.FAILED, 0.05),
    (KernelPhase.SUPERSEDED, 0.03),
)
"""How a library's kernels spread over the phases (Superseded ones were Validated first)."""

WIDTHS = (64, 128, 256, 512, 1024)
ACTIVATIONS = ("gelu", "relu", "silu", "tanh")
NORMS = (False, True)
DROPOUTS = (0.0, 0.1, 0.2, 0.3, 0.5)
DESIGNS = list(itertools.product(WIDTHS, ACTIVATIONS, NORMS, DROPOUTS))
"""The 200 distinct (width, activation, layer norm, dropout) blueprint designs."""
LIST_PAGE_SIZE = 50
DATABASE = "urza_bench"
"""Name of the PostgreSQL database Urza uses."""
MEASURED_AT = datetime(2025, 1, 1, tzinfo=UTC)


# -- the library -------------------------------------------------------------------------------


def blueprint(index: int) -> BlueprintIR:
    """Return the index-th blueprint of the library: a residual MLP block, all different.

    Args:
        index: 0 to 199 (widths x activations x norm x dropout).

    Returns:
        The design; it uses one dimension symbol, ``C``.
    """
    width, activation, norm, dropout = DESIGNS[index]
    nodes: list[dict[str, Any]] = []
    source = "input"
    if norm:
        nodes.append({"id": "norm", "op": "layer_norm", "inputs": ["input"]})
        source = "norm"
    nodes += [
        {"id": "up", "op": "linear", "inputs": [source], "params": {"outFeatures": width}},
        {"id": "act", "op": activation, "inputs": ["up"]},
        {"id": "drop", "op": "dropout", "inputs": ["act"], "params": {"p": dropout}},
        {
            "id": "down",
            "op": "linear",
            "inputs": ["drop"],
            "params": {"outFeatures": "C", "init": "zeros"},
        },
        {"id": "sum", "op": "add", "inputs": ["input", "down"]},
    ]
    name = f"mlp-{width}-{activation}-{'ln' if norm else 'nn'}-d{int(dropout * 10)}"
    return BlueprintIR.model_validate(
        {
            "name": name,
            "description": f"Residual MLP block, hidden width {width}.",
            "tags": ["mlp", "residual", activation],
            "input": {"layout": "features", "shape": ["C"]},
            "nodes": nodes,
            "output": "sum",
        }
    )


@dataclass(frozen=True)
class KernelPlan:
    """One kernel of the library and the state it is seeded in.

    Attributes:
        blueprint_index: Which blueprint.
        target: Its compile target.
        phase: The phase it ends in.
        latency_ms: p50 latency at the largest batch (benchmarked kernels only).
        tags: Its tags.
    """

    blueprint_index: int
    target: KernelTarget
    phase: KernelPhase
    latency_ms: float | None
    tags: tuple[str, ...]


def plan_library(blueprints: int, seed: int) -> list[KernelPlan]:
    """Decide, deterministically, every kernel's phase and latency.

    Args:
        blueprints: How many blueprints (each on every target).
        seed: Random seed.

    Returns:
        The kernels, blueprint by blueprint.
    """
    rng = random.Random(seed)
    phases = [phase for phase, _ in PHASE_WEIGHTS]
    weights = [weight for _, weight in PHASE_WEIGHTS]
    plans: list[KernelPlan] = []
    for index in range(blueprints):
        width = DESIGNS[index][0]
        for short in TARGETS:
            target = KernelTarget.parse(short)
            phase = rng.choices(phases, weights)[0]
            latency = None
            if phase in (KernelPhase.VALIDATED, KernelPhase.REJECTED, KernelPhase.SUPERSEDED):
                speed = 8.0 if target.device.value == "cuda" else 1.0
                base = width / 256 * target.bindings["C"] / 256 / speed
                latency = round(base * rng.lognormvariate(0.0, 0.5), 4)
            tags = ("bench", target.device.value, f"w{width}")
            plans.append(KernelPlan(index, target, phase, latency, tags))
    return plans


def _report(kernel_id: str, plan: KernelPlan) -> BenchmarkReport:
    assert plan.latency_ms is not None
    largest = plan.latency_ms
    rejected = plan.phase is KernelPhase.REJECTED
    return BenchmarkReport(
        kernel_id=kernel_id,
        device_name="NVIDIA H100 80GB HBM3" if plan.target.device.value == "cuda" else "AMD EPYC",
        torch_version="2.11.0",
        max_abs_error=2e-3 if rejected else 1e-5,
        tolerance=1e-3,
        gradients_finite=True,
        gradient_max_abs_error=1e-5,
        function_preserving=True,
        latency=[
            LatencyMeasurement(
                batch_size=size,
                p50_ms=round(largest * size / 256, 4),
                p95_ms=round(largest * size / 256 * 1.3, 4),
            )
            for size in plan.target.batch_sizes
        ],
        peak_memory_bytes=64 * 1024 * 1024,
        params=2 * plan.target.bindings["C"] * 256,
        flops_per_sample=4 * plan.target.bindings["C"] * 256,
        verdict=Verdict.REJECTED if rejected else Verdict.VALIDATED,
        reasons=["maxAbsError 0.002 exceeds tolerance 0.001"] if rejected else [],
        measured_at=MEASURED_AT,
    )


def seed(repository: UrzaRepository, blueprints: int, plans: list[KernelPlan]) -> list[str]:
    """Store the library through the repository (every phase reached by legal moves).

    Args:
        repository: Urza's repository on the database to seed.
        blueprints: How many blueprints the plans use.
        plans: The kernels (from :func:`plan_library`).

    Returns:
        The kernel ids, in plan order.
    """
    hashes = [repository.put_blueprint(blueprint(index))[0].hash for index in range(blueprints)]
    ids: list[str] = []
    for plan in plans:
        kernel, _ = repository.create_kernel(
            KernelCreate(
                blueprint_hash=hashes[plan.blueprint_index], target=plan.target, tags=plan.tags
            )
        )
        ids.append(kernel.id)
        for step in _steps_to(plan.phase):
            if step == "upload":
                data = f"compiled bundle of {kernel.id}\n".encode() * 64
                repository.upload_artifact(kernel.id, data, _sha256(data))
            elif step == "report":
                repository.attach_report(kernel.id, _report(kernel.id, plan))
            else:
                phase = KernelPhase(step)
                repository.change_phase(
                    kernel.id,
                    PhaseChange(
                        phase=phase,
                        error="worker lost" if phase is KernelPhase.FAILED else None,
                        compile_seconds=12.5 if phase is KernelPhase.COMPILED else None,
                        torch_version="2.11.0" if phase is KernelPhase.COMPILED else None,
                    ),
                )
    return ids


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _steps_to(phase: KernelPhase) -> list[str]:
    compiled = ["Compiling", "upload", "Compiled"]
    return {
        KernelPhase.PENDING: [],
        KernelPhase.COMPILING: ["Compiling"],
        KernelPhase.COMPILED: compiled,
        KernelPhase.VALIDATING: [*compiled, "Validating"],
        KernelPhase.VALIDATED: [*compiled, "Validating", "report"],
        KernelPhase.REJECTED: [*compiled, "Validating", "report"],
        KernelPhase.FAILED: ["Compiling", "Failed"],
        KernelPhase.SUPERSEDED: [*compiled, "Validating", "report", "Superseded"],
    }[phase]


# -- the query mix -----------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryMix:
    """What the load generator asks for.

    Attributes:
        kernel_ids: Every kernel id (``get`` picks one uniformly).
        thresholds: ``maxLatencyMs`` values per target short form (``list`` picks a target,
            then one of its thresholds, uniformly).
        list_fraction: Share of requests that are filtered lists.
    """

    kernel_ids: list[str]
    thresholds: dict[str, list[float]]
    list_fraction: float

    def pick(self, rng: random.Random) -> tuple[str, str, dict[str, str]]:
        """Draw one request.

        Args:
            rng: The worker's random generator.

        Returns:
            The kind (``get`` or ``list``), the path and the query parameters.
        """
        if rng.random() < self.list_fraction:
            target = rng.choice(TARGETS)
            params = {
                "phase": KernelPhase.VALIDATED.value,
                "target": target,
                "maxLatencyMs": repr(rng.choice(self.thresholds[target])),
                "limit": str(LIST_PAGE_SIZE),
            }
            return "list", "/v1/kernels", params
        return "get", f"/v1/kernels/{rng.choice(self.kernel_ids)}", {}


def thresholds_of(plans: list[KernelPlan]) -> dict[str, list[float]]:
    """Return per target ``maxLatencyMs`` values admitting 25/50/75/100% of its Validated kernels.

    Args:
        plans: The library.

    Returns:
        Per target short form, four latencies taken from the library itself (nearest rank), so
        ``<=`` selects exactly the intended kernels.
    """
    thresholds: dict[str, list[float]] = {}
    for short in TARGETS:
        latencies = sorted(
            plan.latency_ms
            for plan in plans
            if plan.phase is KernelPhase.VALIDATED
            and plan.latency_ms is not None
            and plan.target.short() == short
        )
        if not latencies:
            raise ValueError(f"the library has no Validated kernel for target {short}")
        thresholds[short] = [
            latencies[max(0, round(len(latencies) * share) - 1)] for share in (0.25, 0.5, 0.75, 1)
        ]
    return thresholds


def check_filters(
    url: str, mix: QueryMix, plans: list[KernelPlan], kernel_ids: list[str]
) -> dict[str, float]:
    """Check every list query, and one GET, against the library's plan before measuring.

    Args:
        url: Urza's base URL.
        mix: The queries.
        plans: The library.
        kernel_ids: The kernels' ids, in plan order.

    Returns:
        How many kernels the list queries match (mean, min, max) and the mean page size.

    Raises:
        RuntimeError: When a filter returns other kernels than the plan says.
    """
    matches: list[int] = []
    with UrzaClient(url) as client:
        for short, thresholds in mix.thresholds.items():
            for threshold in thresholds:
                expected = sorted(
                    kernel_id
                    for kernel_id, plan in zip(kernel_ids, plans, strict=True)
                    if plan.phase is KernelPhase.VALIDATED
                    and plan.target.short() == short
                    and plan.latency_ms is not None
                    and plan.latency_ms <= threshold
                )
                page = client.list_kernels(
                    phase=KernelPhase.VALIDATED,
                    target=KernelTarget.parse(short),
                    max_latency_ms=threshold,
                    limit=500,
                )
                if [kernel.id for kernel in page.items] != expected:
                    raise RuntimeError(
                        f"{url}: target={short} maxLatencyMs={threshold} returned "
                        f"{len(page.items)} kernels, not the {len(expected)} of the library"
                    )
                matches.append(len(expected))
        kernel = client.get_kernel(kernel_ids[0])
        if kernel.id != kernel_ids[0]:
            raise RuntimeError(f"{url}: GET returned kernel {kernel.id}")
    return {
        "matches_mean": round(sum(matches) / len(matches), 1),
        "matches_min": min(matches),
        "matches_max": max(matches),
        "page_items_mean": round(sum(min(m, LIST_PAGE_SIZE) for m in matches) / len(matches), 1),
    }


# -- the load generator ------------------------------------------------------------------------


@dataclass
class LevelRun:
    """The outcome of one load level against one server.

    Attributes:
        latencies: Seconds per successful request, by kind.
        errors: Failed requests by cause (status code or exception type).
        elapsed: Seconds of the recorded window.
        counters: Change of :meth:`Meter.read`'s counters over the recorded window.
    """

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"get": [], "list": []})
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    counters: tuple[float, ...] = (0.0, 0.0, 0.0, 0)


@dataclass(frozen=True)
class Meter:
    """Reads counters of Urza, its database and the load generator.

    Attributes:
        server: The Urza under test.
        database_pid: PostgreSQL's postmaster (None for SQLite, which runs inside Urza).
        database_dsn: DSN of PostgreSQL's maintenance database, to read session counts.
    """

    server: UrzaServer
    database_pid: int | None = None
    database_dsn: str | None = None

    def read(self) -> tuple[float, float, float, int]:
        """Return the counters so far.

        Returns:
            CPU seconds of Urza, of the database and of the load generator, and the sessions
            PostgreSQL opened to Urza's database (0 for SQLite).
        """
        database = process_tree_cpu_seconds(self.database_pid) if self.database_pid else 0.0
        sessions = 0
        if self.database_dsn is not None:
            with psycopg.connect(self.database_dsn, autocommit=True) as connection:
                row = connection.execute(
                    "SELECT sessions FROM pg_stat_database WHERE datname = %s", (DATABASE,)
                ).fetchone()
                sessions = int(row[0]) if row is not None else 0
        return self.server.cpu_seconds(), database, time.process_time(), sessions


async def _level(
    url: str,
    mix: QueryMix,
    meter: Meter,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    seed: int,
) -> LevelRun:
    """Keep ``concurrency`` requests in flight without a pause, for warm-up plus duration.

    Requests that start within the recorded window (after the warm-up) are recorded, those
    still in flight at its end included. The load never stops between warm-up and recording,
    so no connection sits idle long enough for the server to close it (uvicorn closes idle
    keep-alive connections after 5 s, racing a client that reuses one).
    """
    run = LevelRun()
    started = time.perf_counter()
    recording = started + warmup
    deadline = recording + duration

    async def worker(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        while (sent := time.perf_counter()) < deadline:
            kind, path, params = mix.pick(rng)
            try:
                response = await client.get(path, params=params)
            except httpx.HTTPError as error:
                cause = type(error).__name__
            else:
                if response.status_code == 200:
                    if sent >= recording:
                        run.latencies[kind].append(time.perf_counter() - sent)
                    continue
                cause = f"HTTP {response.status_code}"
            if sent >= recording:
                run.errors[cause] = run.errors.get(cause, 0) + 1

    async def metering() -> None:
        await asyncio.sleep(max(0.0, recording - time.perf_counter()))
        before = await asyncio.to_thread(meter.read)
        began = time.perf_counter()
        await asyncio.sleep(max(0.0, deadline - began))
        after = await asyncio.to_thread(meter.read)
        run.elapsed = time.perf_counter() - began
        run.counters = tuple(end - start for start, end in zip(before, after, strict=True))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:
        await asyncio.gather(metering(), *(worker(number) for number in range(concurrency)))
    return run


def measure_level(
    meter: Meter,
    mix: QueryMix,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    seed: int,
) -> dict[str, Any]:
    """Run one load level against one server and summarize it.

    Args:
        meter: The server under test and its counters.
        mix: The queries.
        concurrency: Requests in flight.
        warmup: Seconds of unrecorded load first (on the same connections).
        duration: Seconds recorded.
        seed: Random seed of the request sequence.

    Returns:
        Requests, errors, requests/s, latency percentiles (ms) overall and by kind, and the CPU
        used meanwhile by Urza, PostgreSQL and the load generator (percent of one core).
    """
    run = asyncio.run(
        _level(
            meter.server.url,
            mix,
            meter,
            concurrency=concurrency,
            warmup=warmup,
            duration=duration,
            seed=seed,
        )
    )
    urza_cpu, database_cpu, own_cpu, sessions = run.counters
    everything = [seconds * 1000 for values in run.latencies.values() for seconds in values]
    return {
        "concurrency": concurrency,
        "requests": len(everything),
        "errors": dict(sorted(run.errors.items())),
        "elapsed_s": round(run.elapsed, 3),
        "requests_per_s": round(len(everything) / run.elapsed, 1),
        "latency_ms": summarize(everything) if everything else None,
        "latency_ms_by_kind": {
            kind: summarize([seconds * 1000 for seconds in values]) if values else None
            for kind, values in run.latencies.items()
        },
        "cpu_percent_of_one_core": {
            "urza": round(urza_cpu / run.elapsed * 100, 1),
            "database": (
                round(database_cpu / run.elapsed * 100, 1) if meter.database_pid else None
            ),
            "load_generator": round(own_cpu / run.elapsed * 100, 1),
        },
        # CPU per answered request: less sensitive to other load on the machine than latency.
        "cpu_ms_per_request": {
            "urza": round(urza_cpu * 1000 / max(1, len(everything)), 2),
            "database": (
                round(database_cpu * 1000 / max(1, len(everything)), 2)
                if meter.database_pid
                else None
            ),
            "load_generator": round(own_cpu * 1000 / max(1, len(everything)), 2),
        },
        # Connections PostgreSQL accepted from Urza's pool: many mean the pool churns.
        "database_sessions_opened": int(sessions) if meter.database_dsn else None,
    }


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Backend:
    """One Urza under test and what it runs on.

    Attributes:
        name: ``postgresql`` or ``sqlite``.
        server: The Urza process.
        meter: Its counters (and PostgreSQL's).
    """

    name: str
    server: UrzaServer
    meter: Meter


@dataclass(frozen=True)
class Library:
    """The seeded library, ready to be served.

    Attributes:
        sqlite_url: The SQLite database the repository seeded.
        artifacts: The local blob store's directory (shared, read-only while measuring).
        kernel_ids: Every kernel id, in plan order.
        seed_seconds: How long seeding took through the repository.
    """

    sqlite_url: str
    artifacts: Path
    kernel_ids: list[str]
    seed_seconds: float


def seed_sqlite(work: Path, blueprints: int, plans: list[KernelPlan]) -> Library:
    """Seed the library into a new SQLite database through Urza's repository.

    Args:
        work: Directory for the database and the artifacts.
        blueprints: How many blueprints the plans use.
        plans: The kernels.

    Returns:
        The seeded library.
    """
    url = f"sqlite:///{work / 'urza.sqlite'}"
    artifacts = work / "artifacts"
    engine = make_engine(url)
    # Seeding is not measured: skip SQLite's fsyncs on the seeding connections only (the
    # setting is per connection; the server's own connections keep SQLite's defaults).
    event.listen(engine, "connect", _sqlite_unsynchronised)
    try:
        migrate(engine)
        repository = UrzaRepository(session_factory(engine), LocalBlobStore(artifacts))
        started = time.perf_counter()
        ids = seed(repository, blueprints, plans)
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    return Library(url, artifacts, ids, round(seconds, 2))


def copy_library(source_url: str, target_url: str) -> float:
    """Copy every Urza table row for row into a freshly migrated database.

    The rows are exactly those the repository wrote, so both backends serve the same library.
    Afterwards PostgreSQL's serial sequences are moved past the copied ids and the tables are
    analysed (what autovacuum does after a bulk load).

    Args:
        source_url: The seeded database.
        target_url: The empty target database.

    Returns:
        Seconds taken.
    """
    started = time.perf_counter()
    source = make_engine(source_url)
    target = make_engine(target_url)
    try:
        migrate(target)
        with source.connect() as reader, target.begin() as writer:
            for table in Base.metadata.sorted_tables:
                rows = [
                    {key: _aware(value) for key, value in row.items()}
                    for row in reader.execute(select(table)).mappings()
                ]
                if rows:
                    writer.execute(insert(table), rows)
                serial = "id" in table.c and isinstance(table.c["id"].type, Integer)
                if target.dialect.name == "postgresql" and serial:
                    writer.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                            f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table.name}), false)"
                        )
                    )
        if target.dialect.name == "postgresql":
            with target.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    finally:
        source.dispose()
        target.dispose()
    return round(time.perf_counter() - started, 2)


def _aware(value: object) -> object:
    # SQLite hands back naive datetimes; everything Urza stores is UTC.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _sqlite_unsynchronised(connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA synchronous=OFF")
    cursor.close()


def _serve(name: str, database_url: str, library: Library, stack: ExitStack) -> UrzaServer:
    log(f"{name}: starting esper urza serve")
    return stack.enter_context(
        UrzaServer(
            {
                "ESPER_URZA_DATABASE_URL": database_url,
                "ESPER_URZA_BLOB_STORE": "local",
                "ESPER_URZA_ARTIFACT_DIR": str(library.artifacts),
            }
        )
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Seed, serve and measure every backend; return the results.

    Args:
        args: The parsed command line.

    Returns:
        The results document's ``results`` part.
    """
    plans = plan_library(args.blueprints, args.seed)
    with ExitStack() as stack:
        work = stack.enter_context(temporary_directory("esper-bench-queries-"))
        log(f"seeding {len(plans)} kernels of {args.blueprints} blueprints into SQLite")
        library = seed_sqlite(work, args.blueprints, plans)
        log(f"seeded in {library.seed_seconds:.1f}s")
        backends: list[Backend] = []
        copy_seconds: float | None = None
        for name in args.backends:
            if name == "postgresql":
                postgres = stack.enter_context(PostgresServer())
                postgres.create_database(DATABASE)
                database_url = postgres.sqlalchemy_url(DATABASE)
                copy_seconds = copy_library(library.sqlite_url, database_url)
                log(f"postgresql: library copied in {copy_seconds:.1f}s")
                server = _serve(name, database_url, library, stack)
                meter = Meter(server, postgres.pid, postgres.dsn())
                backends.append(Backend(name, server, meter))
            else:
                server = _serve(name, library.sqlite_url, library, stack)
                backends.append(Backend(name, server, Meter(server)))
        mix = QueryMix(
            kernel_ids=library.kernel_ids,
            thresholds=thresholds_of(plans),
            list_fraction=args.list_fraction,
        )
        checks = {
            backend.name: check_filters(backend.server.url, mix, plans, library.kernel_ids)
            for backend in backends
        }
        levels: list[dict[str, Any]] = []
        for concurrency in args.concurrency:
            for backend in backends:
                log(f"{backend.name}: concurrency {concurrency} for {args.duration:g}s")
                level = measure_level(
                    backend.meter,
                    mix,
                    concurrency=concurrency,
                    warmup=args.warmup,
                    duration=args.duration,
                    seed=args.seed + concurrency,
                )
                levels.append({"backend": backend.name, **level})
    return {
        "library": {
            "blueprints": args.blueprints,
            "kernels": len(plans),
            "targets": list(TARGETS),
            "kernels_by_phase": {
                phase.value: sum(1 for plan in plans if plan.phase is phase)
                for phase, _ in PHASE_WEIGHTS
            },
            "max_latency_ms_thresholds": mix.thresholds,
            "list_query_matches": checks,
        },
        "setup_seconds": {
            "seed_sqlite_through_repository": library.seed_seconds,
            "copy_to_postgresql": copy_seconds,
        },
        "levels": levels,
        "comparison": _comparison(levels),
    }


def _comparison(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {(level["backend"], level["concurrency"]): level for level in levels}
    rows = []
    for concurrency in sorted({level["concurrency"] for level in levels}):
        postgres = by_key.get(("postgresql", concurrency))
        sqlite = by_key.get(("sqlite", concurrency))
        if postgres is None or sqlite is None:
            continue
        if not postgres["latency_ms"] or not sqlite["latency_ms"]:
            continue
        rows.append(
            {
                "concurrency": concurrency,
                "requests_per_s_postgresql_over_sqlite": round(
                    postgres["requests_per_s"] / sqlite["requests_per_s"], 2
                ),
                "p50_postgresql_over_sqlite": round(
                    postgres["latency_ms"]["p50"] / sqlite["latency_ms"]["p50"], 2
                ),
                "p99_postgresql_over_sqlite": round(
                    postgres["latency_ms"]["p99"] / sqlite["latency_ms"]["p99"], 2
                ),
            }
        )
    return rows


def table(results: dict[str, Any]) -> str:
    """Render the levels as a readable table.

    Args:
        results: What :func:`run` returned.

    Returns:
        The table.
    """
    rows = []
    for level in results["levels"]:
        overall = level["latency_ms"] or {}
        kinds = level["latency_ms_by_kind"]
        cpu = level["cpu_percent_of_one_core"]
        rows.append(
            [
                level["backend"],
                level["concurrency"],
                level["requests"],
                f"{level['requests_per_s']:.0f}",
                overall.get("p50", "-"),
                overall.get("p99", "-"),
                (kinds["get"] or {}).get("p50", "-"),
                (kinds["list"] or {}).get("p50", "-"),
                sum(level["errors"].values()),
                cpu["urza"],
                "-" if cpu["database"] is None else cpu["database"],
                cpu["load_generator"],
                level["cpu_ms_per_request"]["urza"],
                (
                    "-"
                    if level["database_sessions_opened"] is None
                    else level["database_sessions_opened"]
                ),
            ]
        )
    return format_table(
        [
            "backend",
            "conc",
            "requests",
            "req/s",
            "p50 ms",
            "p99 ms",
            "get p50",
            "list p50",
            "errors",
            "urza cpu%",
            "db cpu%",
            "loadgen cpu%",
            "urza cpu ms/req",
            "pg sessions",
        ],
        rows,
    )


def _positive_ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,16,64, got {text!r}")
    return values


def _backends(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - {"postgresql", "sqlite"})
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"backends are postgresql and sqlite, got {text!r}")
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
        "--duration", type=float, default=10.0, help="seconds recorded per level (10)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unrecorded seconds before each level (2)"
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_ints,
        default=[1, 16, 64],
        help="requests in flight, comma separated (1,16,64)",
    )
    parser.add_argument(
        "--backends",
        type=_backends,
        default=["postgresql", "sqlite"],
        help="databases to compare (postgresql,sqlite)",
    )
    parser.add_argument(
        "--blueprints", type=int, default=200, help="blueprints in the library, 1..200 (200)"
    )
    parser.add_argument(
        "--list-fraction",
        type=float,
        default=0.5,
        help="share of filtered list queries; the rest are GETs by id (0.5)",
    )
    parser.add_argument("--seed", type=int, default=20250101, help="random seed")
    parser.add_argument(
        "--out", type=Path, default=None, help="result file (benchmarks/results/urza_queries.json)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.blueprints <= len(DESIGNS):
        parser.error("--blueprints must be within 1..200")
    if not 0.0 <= args.list_fraction <= 1.0:
        parser.error("--list-fraction must be within 0..1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be > 0 and --warmup >= 0")
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
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "backends": args.backends,
        "blueprints": args.blueprints,
        "list_fraction": args.list_fraction,
        "list_page_size": LIST_PAGE_SIZE,
        "seed": args.seed,
        "blob_store": "local",
        "load_generator": "asyncio + httpx.AsyncClient, one connection per request in flight",
    }
    path = write_result(NAME, parameters, results, out=args.out, env=env)
    print(table(results))
    for row in results["comparison"]:
        print(
            f"concurrency {row['concurrency']}: PostgreSQL/SQLite requests/s "
            f"{row['requests_per_s_postgresql_over_sqlite']}x, p50 "
            f"{row['p50_postgresql_over_sqlite']}x, p99 {row['p99_postgresql_over_sqlite']}x"
        )
    print(f"setup: {results['setup_seconds']} s")
    print(f"wrote {path} (run took {results['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
