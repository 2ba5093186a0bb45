"""Concurrent deletes on PostgreSQL: the second of two deletes of one blueprint finds it gone.

Found by the malformed-resource fuzz (SQLAlchemy warned "DELETE ... expected to delete 1 row(s);
0 were matched" when two deletes of one blueprint overlapped): the loser read the row, waited on
the winner's lock, deleted nothing and reported success. The blueprint row is now read FOR
UPDATE, so the loser waits before reading and answers NotFoundError (404), which the operator
already treats as "already removed". SQLite serialises writers, so the race needs PostgreSQL.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Engine, text

from esper.urza.models import BlueprintRow, BlueprintTagRow
from esper.urza.repository import NotFoundError

from .conftest import Storage
from .helpers import blueprint

pytestmark = [
    pytest.mark.parametrize(
        "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
    ),
    pytest.mark.timeout(120),
]


def _wait_until_a_backend_waits_on_a_lock(engine: Engine, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            if connection.scalar(query):
                return
        time.sleep(0.05)
    raise TimeoutError("the racing delete never waited on the row lock")


def test_a_delete_that_loses_the_race_finds_the_blueprint_gone(storage: Storage) -> None:
    repo = storage.repository
    record, _ = repo.put_blueprint(blueprint(width=77, tags=("a", "b")))
    outcome: list[object] = []

    def delete() -> None:
        try:
            repo.delete_blueprint(record.hash, cascade=True)
        except NotFoundError as error:
            outcome.append(error)
        else:
            outcome.append("deleted")

    racer = threading.Thread(target=delete)
    with storage.engine.connect() as winner:
        transaction = winner.begin()
        # The winner holds the row, as a delete in progress does.
        winner.execute(
            text("SELECT hash FROM blueprints WHERE hash = :hash FOR UPDATE"),
            {"hash": record.hash},
        )
        racer.start()
        _wait_until_a_backend_waits_on_a_lock(storage.engine)
        winner.execute(text("DELETE FROM blueprints WHERE hash = :hash"), {"hash": record.hash})
        transaction.commit()
    racer.join(timeout=30)

    assert not racer.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], NotFoundError), outcome
    assert f"blueprint {record.hash} is not registered" in str(outcome[0])
    assert storage.count(BlueprintRow) == 0
    assert storage.count(BlueprintTagRow) == 0
