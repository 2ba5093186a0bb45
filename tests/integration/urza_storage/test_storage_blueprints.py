"""Blueprints in Urza's repository, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from esper.contracts.blueprint import BlueprintIR
from esper.contracts.urza_api import MAX_PAGE_SIZE, BlueprintRecord
from esper.urza.models import BlueprintRow, BlueprintTagRow, KernelRow, KernelTagRow
from esper.urza.repository import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    UrzaRepository,
)

from .conftest import Storage
from .helpers import BACKENDS, blueprint, compiled, cpu_target, register

pytestmark = [BACKENDS, pytest.mark.timeout(120)]


def test_put_blueprint_is_idempotent_by_canonical_hash(storage: Storage) -> None:
    repo = storage.repository
    first = blueprint(name="first-name", tags=("mlp",), description="first")
    renamed = blueprint(name="second-name", tags=("other",), description="second")

    record, created = repo.put_blueprint(first)
    again, created_again = repo.put_blueprint(renamed)

    assert created is True
    assert created_again is False
    assert record.hash == first.canonical_hash() == renamed.canonical_hash()
    assert again.hash == record.hash
    # The first submission's metadata is kept; the second changes nothing.
    assert again.ir.name == "first-name"
    assert again.ir.description == "first"
    assert again.ir.tags == ["mlp"]
    assert again.created_at == record.created_at
    assert storage.count(BlueprintRow) == 1
    assert storage.count(BlueprintTagRow) == 1
    assert repo.list_blueprints(tag="other").items == []


def test_stored_blueprint_round_trips_exactly(repository: UrzaRepository) -> None:
    ir = blueprint(width=96, tags=("residual", "mlp", "residual"))
    record, _ = repository.put_blueprint(ir)

    fetched = repository.get_blueprint(record.hash)

    assert fetched == record
    assert fetched.ir.canonical_json() == ir.canonical_json()
    assert fetched.ir == ir
    assert isinstance(fetched, BlueprintRecord)


def test_get_unknown_blueprint_is_not_found(repository: UrzaRepository) -> None:
    missing = blueprint(width=7).canonical_hash()
    with pytest.raises(NotFoundError, match=missing):
        repository.get_blueprint(missing)


def test_concurrent_puts_of_one_blueprint_store_one_row(storage: Storage) -> None:
    repo = storage.repository
    ir = blueprint(width=321)
    workers = 8
    barrier = threading.Barrier(workers)

    def submit(index: int) -> tuple[BlueprintRecord, bool]:
        barrier.wait(timeout=30)
        return repo.put_blueprint(ir.model_copy(update={"name": f"racer-{index}"}))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(submit, index) for index in range(workers)]
        results = [future.result(timeout=60) for future in futures]

    assert len(results) == workers
    assert sum(created for _, created in results) == 1
    assert {record.hash for record, _ in results} == {ir.canonical_hash()}
    winner = next(record for record, created in results if created)
    assert {record.ir.name for record, _ in results} == {winner.ir.name}
    assert storage.count(BlueprintRow) == 1
    assert storage.count(BlueprintTagRow) == len(set(ir.tags))


def test_put_blueprint_that_loses_the_insert_race_returns_the_winner(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = storage.repository
    winner, _ = repo.put_blueprint(blueprint(name="winner"))
    real_find = repo._find_blueprint
    calls = iter([None])

    def find_after_the_race(blueprint_hash: str) -> BlueprintRecord | None:
        # The first look happens "before" the winner committed; later looks see it.
        return next(calls, None) or real_find(blueprint_hash)

    monkeypatch.setattr(repo, "_find_blueprint", find_after_the_race)

    record, created = repo.put_blueprint(blueprint(name="loser"))

    assert created is False
    assert record == winner
    assert storage.count(BlueprintRow) == 1


def test_list_blueprints_filters_by_name_and_tag(repository: UrzaRepository) -> None:
    conv = repository.put_blueprint(blueprint(1, name="alpha", tags=("conv", "small")))[0]
    mlp = repository.put_blueprint(blueprint(2, name="alpha", tags=("mlp",)))[0]
    other = repository.put_blueprint(blueprint(3, name="beta", tags=("conv",)))[0]

    def hashes(**filters: str) -> set[str]:
        return {record.hash for record in repository.list_blueprints(**filters).items}

    assert hashes() == {conv.hash, mlp.hash, other.hash}
    assert hashes(name="alpha") == {conv.hash, mlp.hash}
    assert hashes(tag="conv") == {conv.hash, other.hash}
    assert hashes(name="alpha", tag="conv") == {conv.hash}
    assert hashes(name="gamma") == set()
    assert hashes(tag="missing") == set()


@pytest.mark.parametrize("limit", [1, 3, 7, 8])
def test_list_blueprints_pages_cover_everything_once_in_order(
    repository: UrzaRepository, limit: int
) -> None:
    stored = sorted(repository.put_blueprint(blueprint(10 + index))[0].hash for index in range(7))

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = repository.list_blueprints(limit=limit, cursor=cursor)
        pages += 1
        assert len(page.items) <= limit
        seen.extend(record.hash for record in page.items)
        if page.next_cursor is None:
            break
        assert page.next_cursor == page.items[-1].hash
        cursor = page.next_cursor
        assert pages <= 8, "pagination does not terminate"

    assert seen == stored
    assert pages == max(1, -(-len(stored) // limit))


def test_list_blueprints_pagination_with_a_filter(repository: UrzaRepository) -> None:
    tagged = sorted(
        repository.put_blueprint(blueprint(40 + index, tags=("wanted",)))[0].hash
        for index in range(5)
    )
    for index in range(4):
        repository.put_blueprint(blueprint(60 + index, tags=("unwanted",)))

    first = repository.list_blueprints(tag="wanted", limit=2)
    second = repository.list_blueprints(tag="wanted", limit=2, cursor=first.next_cursor)
    third = repository.list_blueprints(tag="wanted", limit=2, cursor=second.next_cursor)

    assert [r.hash for page in (first, second, third) for r in page.items] == tagged
    assert third.next_cursor is None


def test_list_blueprints_pages_stay_consistent_while_rows_are_added(
    repository: UrzaRepository,
) -> None:
    # Keyset pagination: rows added between pages never make an earlier row repeat or vanish.
    original = {repository.put_blueprint(blueprint(100 + index))[0].hash for index in range(6)}
    first = repository.list_blueprints(limit=3)
    added = {repository.put_blueprint(blueprint(200 + index))[0].hash for index in range(4)}

    seen = [record.hash for record in first.items]
    cursor = first.next_cursor
    while cursor is not None:
        page = repository.list_blueprints(limit=3, cursor=cursor)
        seen.extend(record.hash for record in page.items)
        cursor = page.next_cursor

    assert len(seen) == len(set(seen))
    assert original <= set(seen)
    assert set(seen) <= original | added
    assert seen == sorted(seen)
    # Exactly the added rows that sort after the first page show up.
    assert set(seen) - original == {digest for digest in added if digest > first.items[-1].hash}


def test_list_blueprints_rejects_out_of_range_limits(repository: UrzaRepository) -> None:
    for limit in (0, -1, MAX_PAGE_SIZE + 1):
        with pytest.raises(InvalidRequestError, match="limit must be between 1 and"):
            repository.list_blueprints(limit=limit)
    assert repository.list_blueprints(limit=MAX_PAGE_SIZE).items == []


def test_delete_blueprint_without_kernels(storage: Storage) -> None:
    repo = storage.repository
    record, _ = repo.put_blueprint(blueprint())

    repo.delete_blueprint(record.hash)

    assert storage.count(BlueprintRow) == 0
    assert storage.count(BlueprintTagRow) == 0
    with pytest.raises(NotFoundError):
        repo.get_blueprint(record.hash)
    with pytest.raises(NotFoundError):
        repo.delete_blueprint(record.hash)


def test_delete_blueprint_with_kernels_is_a_conflict_and_changes_nothing(
    storage: Storage,
) -> None:
    repo = storage.repository
    kernel = compiled(repo, tags=("keep",))

    with pytest.raises(ConflictError, match="1 kernel"):
        repo.delete_blueprint(kernel.blueprint_hash)

    assert repo.get_blueprint(kernel.blueprint_hash).hash == kernel.blueprint_hash
    assert repo.get_kernel(kernel.id) == kernel
    assert storage.count(KernelTagRow, kernel_id=kernel.id) == 1
    assert kernel.sha256 is not None
    assert storage.blobs.exists(kernel.sha256)


def test_delete_blueprint_cascade_removes_kernels_rows_and_blobs(storage: Storage) -> None:
    repo = storage.repository
    first = compiled(repo, cpu_target(8), label="one", tags=("a",))
    second = compiled(repo, cpu_target(16), label="two", tags=("b",))
    pending = register(repo, cpu_target(32), tags=("c",))
    # A kernel of another blueprint sharing the first bundle keeps that blob alive.
    other_ir = blueprint(width=999)
    survivor = compiled(repo, cpu_target(8), label="one", ir=other_ir)
    assert first.sha256 == survivor.sha256 != second.sha256
    assert first.sha256 is not None
    assert second.sha256 is not None

    repo.delete_blueprint(first.blueprint_hash, cascade=True)

    for gone in (first, second, pending):
        with pytest.raises(NotFoundError):
            repo.get_kernel(gone.id)
    with pytest.raises(NotFoundError):
        repo.get_blueprint(first.blueprint_hash)
    assert storage.count(KernelRow) == 1
    assert storage.count(KernelTagRow) == 0
    assert storage.count(BlueprintRow) == 1
    assert not storage.blobs.exists(second.sha256)
    assert storage.blobs.exists(first.sha256)
    assert repo.read_artifact(survivor.id)[1] == storage.blobs.get(first.sha256)


def test_blueprint_created_at_is_aware_utc(repository: UrzaRepository) -> None:
    before = datetime.now(UTC)
    record, _ = repository.put_blueprint(blueprint())
    after = datetime.now(UTC)

    for value in (record.created_at, repository.get_blueprint(record.hash).created_at):
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= value <= after + timedelta(seconds=1)
    listed = repository.list_blueprints().items[0].created_at
    assert listed == record.created_at
    assert listed.utcoffset() == timedelta(0)


def test_foreign_keys_are_enforced(storage: Storage) -> None:
    # SQLite ignores foreign keys unless make_engine switches them on for every connection.
    with pytest.raises(IntegrityError), storage.engine.begin() as connection:
        connection.execute(
            text("INSERT INTO blueprint_tags (blueprint_hash, tag) VALUES (:hash, 'orphan')"),
            {"hash": "0" * 64},
        )
    assert storage.count(BlueprintTagRow) == 0


def test_blueprint_with_a_shape_error_is_invalid_and_not_stored(storage: Storage) -> None:
    broken = BlueprintIR.model_validate(
        {
            "name": "mismatched",
            "input": {"layout": "features", "shape": [16]},
            "nodes": [
                {"id": "narrow", "op": "linear", "inputs": ["input"], "params": {"outFeatures": 8}},
                {"id": "sum", "op": "add", "inputs": ["input", "narrow"]},
            ],
            "output": "sum",
        }
    )

    with pytest.raises(InvalidRequestError, match=r"blueprint 'mismatched'.*'sum'"):
        storage.repository.put_blueprint(broken)

    assert storage.count(BlueprintRow) == 0
    assert storage.count(BlueprintTagRow) == 0
