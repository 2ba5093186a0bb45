"""Oona: publish-to-consume latency and events/s, on Redis Streams and in process.

Rerun (from the repository root):

    python benchmarks/oona_latency.py --out benchmarks/results/oona_latency.json
    python benchmarks/oona_latency.py --redis-url redis://127.0.0.1:6379/0 --out ...

Without ``--redis-url`` a throwaway Redis (``tests.servers.RedisServer``: append-only file,
``appendfsync everysec``, as in the test suite) is started and stopped again.

Scenarios, each on a fresh stream and consumer group:

- ``latency``: events published at a steady ``--rate`` (light load); the latency of an event is
  the time from just before ``publish()`` (its id carries ``time.monotonic_ns()``) to the return
  of the ``receive()`` that delivered it. ``CLOCK_MONOTONIC`` is system-wide on Linux, so this
  also holds across processes.
- ``throughput``: events published back to back from one thread; events/s is the number of
  events over the time from the first publish to the last delivery (acknowledged in batches).

Consumers: a thread of the publishing process (the only option in process, and what a training
loop with an in-process consumer sees), and for Redis also a separate process (what a forge
worker or Urza sees). The first ``--warmup`` events of each scenario are not counted.
"""

import argparse
import json
import multiprocessing
import os
import platform
import secrets
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.servers when the script is run by path

import pydantic  # noqa: E402
import redis  # noqa: E402

from esper.contracts import Event, Topic  # noqa: E402
from esper.contracts.events import RunProgress  # noqa: E402
from esper.oona import Bus, InProcessBus, RedisStreamsBus  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

TOPIC = Topic.RUN_PROGRESS
RECEIVE_BATCH = 500
MAXLEN = 1_000_000  # no trimming during a run: a lagging consumer must not lose events


def make_event(seq: int) -> Event:
    """A valid event; :func:`stamp` gives it its id just before it is published."""
    return Event(
        id=f"b{seq}-0",
        topic=TOPIC,
        source="benchmark",
        payload=RunProgress(
            run_id="bench", epoch=seq, train_loss=0.25, val_accuracy=0.9, params=1_000_000
        ),
    )


def stamp(event: Event, seq: int) -> Event:
    """Set the id to ``b<seq>-<monotonic ns>`` (a copy without re-validation, ~microseconds)."""
    return event.model_copy(update={"id": f"b{seq}-{time.monotonic_ns()}"})


def _parse_id(event_id: str) -> tuple[int, int]:
    seq, stamp = event_id[1:].split("-")
    return int(seq), int(stamp)


@dataclass
class Consumed:
    """What a consumer measured: latencies of counted events and the time of the last one."""

    latencies_ns: list[int]
    last_ns: int
    received: int


def consume(bus: Bus, group: str, expected: int, warmup: int, timeout_s: float) -> Consumed:
    """Receive until ``expected`` events arrived; acknowledge each batch."""
    subscription = bus.subscribe(TOPIC, group, f"consumer-{os.getpid()}")
    latencies: list[int] = []
    received, last_ns = 0, 0
    deadline = time.monotonic() + timeout_s
    while received < expected and time.monotonic() < deadline:
        batch = subscription.receive(max_count=RECEIVE_BATCH, block_ms=100)
        now = time.monotonic_ns()
        for delivery in batch:
            seq, stamp = _parse_id(delivery.event.id)
            if seq >= warmup:
                latencies.append(now - stamp)
        if batch:
            subscription.ack(*batch)
            received += len(batch)
            last_ns = now
    subscription.close()
    return Consumed(latencies, last_ns, received)


@dataclass(frozen=True)
class ChildJob:
    """What a consumer process needs (picklable)."""

    url: str
    prefix: str
    group: str
    expected: int
    warmup: int
    timeout_s: float


def _consume_in_child(job: ChildJob, conn: Connection) -> None:
    with RedisStreamsBus(job.url, prefix=job.prefix, maxlen=MAXLEN) as bus:
        conn.send("ready")
        result = consume(bus, job.group, job.expected, job.warmup, job.timeout_s)
    conn.send((result.latencies_ns, result.last_ns, result.received))
    conn.close()


def publish_all(bus: Bus, count: int, rate: float | None) -> tuple[int, int]:
    """Publish ``count`` events, paced at ``rate`` per second (None: back to back).

    Returns:
        Monotonic ns of the first publish and of the end of the last.
    """
    events = [make_event(seq) for seq in range(count)]  # built (validated) beforehand
    interval = 0.0 if rate is None else 1.0 / rate
    start = time.monotonic()
    first_ns = time.monotonic_ns()
    for seq, event in enumerate(events):
        if interval:
            delay = start + seq * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        bus.publish(stamp(event, seq))
    return first_ns, time.monotonic_ns()


def percentile(sorted_values: list[int], fraction: float) -> float:
    """Nearest-rank percentile."""
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return float(sorted_values[index])


def summarise(latencies_ns: list[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in microseconds."""
    values = sorted(latencies_ns)
    if not values:
        return {}
    micro = 1000.0
    return {
        "p50": round(percentile(values, 0.50) / micro, 1),
        "p90": round(percentile(values, 0.90) / micro, 1),
        "p99": round(percentile(values, 0.99) / micro, 1),
        "p99_9": round(percentile(values, 0.999) / micro, 1),
        "max": round(values[-1] / micro, 1),
        "mean": round(sum(values) / len(values) / micro, 1),
    }


@dataclass
class Scenario:
    """One measured run."""

    backend: str
    consumer: str
    mode: str
    events: int
    rate: float | None


def run_scenario(
    scenario: Scenario,
    make: Callable[[str], Bus],
    url: str | None,
    warmup: int,
    timeout_s: float,
) -> dict[str, object]:
    """Run one scenario on a fresh stream (prefix) and group; return its results."""
    prefix = f"esper:bench:{secrets.token_hex(4)}:"
    group = "bench"
    total = scenario.events + warmup
    bus = make(prefix)
    bus.subscribe(TOPIC, group, "setup").close()  # the group exists before the first event
    result: Consumed
    if scenario.consumer == "process":
        assert url is not None
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        job = ChildJob(url, prefix, group, total, warmup, timeout_s)
        process = context.Process(target=_consume_in_child, args=(job, child))
        process.start()
        if parent.recv() != "ready":
            raise RuntimeError("consumer process did not start")
        first_ns, published_ns = publish_all(bus, total, scenario.rate)
        latencies, last_ns, received = parent.recv()
        process.join(timeout=30)
        result = Consumed(latencies, last_ns, received)
    else:
        box: list[Consumed] = []
        thread = threading.Thread(
            target=lambda: box.append(consume(bus, group, total, warmup, timeout_s))
        )
        thread.start()
        first_ns, published_ns = publish_all(bus, total, scenario.rate)
        thread.join(timeout=timeout_s + 30)
        result = box[0]
    if isinstance(bus, RedisStreamsBus):
        bus.client.delete(bus.key(TOPIC))
    bus.close()
    if result.received < total:
        raise RuntimeError(f"{scenario}: received {result.received} of {total} events")
    elapsed_s = (result.last_ns - first_ns) / 1e9
    return {
        "backend": scenario.backend,
        "consumer": scenario.consumer,
        "mode": scenario.mode,
        "events": scenario.events,
        "warmup_events": warmup,
        "target_rate_per_s": scenario.rate,
        "payload_bytes": len(stamp(make_event(0), 0).to_json()),
        "latency_us": summarise(result.latencies_ns),
        "publish_per_s": round(total / ((published_ns - first_ns) / 1e9)),
        "events_per_s": round(total / elapsed_s),
    }


def _git() -> dict[str, object]:
    def run(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "revision": run("rev-parse", "HEAD"),
        "dirty": bool(run("status", "--porcelain", "--untracked-files=no")),
    }


def _machine() -> dict[str, object]:
    cpu = ""
    memory_kib = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu or platform.processor(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "hostname": platform.node(),
        "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()],
    }


def _redis_info(url: str, started_here: bool) -> dict[str, object]:
    client = redis.Redis.from_url(url)
    rtts: list[int] = []
    for _ in range(1000):
        began = time.monotonic_ns()
        client.ping()
        rtts.append(time.monotonic_ns() - began)
    info = client.info("server")
    config = client.config_get("appendonly")
    config.update(client.config_get("appendfsync"))
    client.close()
    return {
        "version": info.get("redis_version"),
        "started_by_benchmark": started_here,
        "appendonly": config.get("appendonly"),
        "appendfsync": config.get("appendfsync"),
        "redis_py_ping_rtt_us": summarise(rtts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="Redis to use; default: start a throwaway one")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/oona_latency.json")
    parser.add_argument("--latency-events", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s in latency runs")
    parser.add_argument("--throughput-events", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per scenario")
    args = parser.parse_args()

    machine_before = _machine()
    server: RedisServer | None = None
    url = args.redis_url
    if url is None:
        server = RedisServer()
        server.start()
        url = server.url()
    try:
        redis_url: str = url
        redis_server = _redis_info(redis_url, server is not None)

        def make_redis(prefix: str) -> Bus:
            return RedisStreamsBus(redis_url, prefix=prefix, maxlen=MAXLEN)

        def make_memory(prefix: str) -> Bus:
            return InProcessBus(maxlen=MAXLEN)

        scenarios: list[tuple[Scenario, Callable[[str], Bus]]] = []
        for mode, events, rate in (
            ("latency", args.latency_events, args.rate),
            ("throughput", args.throughput_events, None),
        ):
            scenarios.append((Scenario("in-process", "thread", mode, events, rate), make_memory))
            scenarios.append((Scenario("redis", "thread", mode, events, rate), make_redis))
            scenarios.append((Scenario("redis", "process", mode, events, rate), make_redis))
        results = []
        for scenario, make in scenarios:
            outcome = run_scenario(scenario, make, redis_url, args.warmup, args.timeout)
            results.append(outcome)
            latency = outcome["latency_us"]
            assert isinstance(latency, dict)
            print(
                f"{scenario.backend:>10} {scenario.consumer:>7} {scenario.mode:>10}: "
                f"p50 {latency['p50']:>8} us  p99 {latency['p99']:>8} us  "
                f"{outcome['events_per_s']:>7} events/s  (publish {outcome['publish_per_s']}/s)",
                flush=True,
            )
        report = {
            "benchmark": "oona_latency",
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": shlex.join(["python", *sys.argv]),
            "python_executable": sys.executable,
            "git": _git(),
            "machine": machine_before,
            "load_average_after": _machine()["load_average_1_5_15"],
            "software": {
                "python": platform.python_version(),
                "redis_py": redis.__version__,
                "pydantic": pydantic.VERSION,
            },
            "redis_server": redis_server,
            "parameters": {
                "topic": TOPIC.value,
                "receive_batch": RECEIVE_BATCH,
                "latency_events": args.latency_events,
                "rate_per_s": args.rate,
                "throughput_events": args.throughput_events,
                "warmup": args.warmup,
                "maxlen": MAXLEN,
                "receive_block_ms": 100,
            },
            "results": results,
        }
    finally:
        if server is not None:
            server.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
