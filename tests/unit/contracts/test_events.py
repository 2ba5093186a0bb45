"""Oona's event envelope: the topic decides the payload model."""

import itertools
import json
import re
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from esper.contracts import PAYLOAD_BY_TOPIC, Event, Topic

from .samples import event, payload_for

TOPICS = list(Topic)
MISMATCHES = [(topic, other) for topic, other in itertools.product(Topic, Topic) if topic != other]


def mismatch_id(pair: tuple[Topic, Topic]) -> str:
    return f"{pair[0].value}<-{pair[1].value}"


def test_every_topic_has_a_payload_model() -> None:
    assert set(PAYLOAD_BY_TOPIC) == set(Topic)
    assert len(set(PAYLOAD_BY_TOPIC.values())) == len(Topic)


@pytest.mark.parametrize("topic", TOPICS, ids=str)
def test_event_json_round_trip(topic: Topic) -> None:
    value = event(topic)
    text = value.to_json()
    again = Event.model_validate_json(text)
    assert again == value
    assert type(again.payload) is PAYLOAD_BY_TOPIC[topic]
    document = json.loads(text)
    assert document["topic"] == topic.value
    assert set(document) == {"id", "topic", "traceId", "source", "createdAt", "payload"}


@pytest.mark.parametrize("topic", TOPICS, ids=str)
def test_payload_model_is_chosen_by_topic(topic: Topic) -> None:
    payload = json.loads(payload_for(topic).to_json())
    parsed = Event.model_validate({"topic": topic.value, "source": "test", "payload": payload})
    assert type(parsed.payload) is PAYLOAD_BY_TOPIC[topic]
    assert parsed.payload == payload_for(topic)


@pytest.mark.parametrize("pair", MISMATCHES, ids=mismatch_id)
def test_a_payload_of_another_topic_is_rejected_as_a_document(pair: tuple[Topic, Topic]) -> None:
    topic, other = pair
    payload = json.loads(payload_for(other).to_json())
    with pytest.raises(ValidationError) as caught:
        Event.model_validate({"topic": topic.value, "source": "test", "payload": payload})
    expected = PAYLOAD_BY_TOPIC[topic].__name__
    assert f"payload of topic '{topic.value}' is not a valid {expected}" in str(caught.value)


@pytest.mark.parametrize("pair", MISMATCHES, ids=mismatch_id)
def test_a_payload_of_another_topic_is_rejected_as_a_model(pair: tuple[Topic, Topic]) -> None:
    topic, other = pair
    with pytest.raises(ValidationError) as caught:
        Event(topic=topic, source="test", payload=payload_for(other))
    expected, given = PAYLOAD_BY_TOPIC[topic].__name__, PAYLOAD_BY_TOPIC[other].__name__
    assert f"topic '{topic.value}' carries {expected}, not {given}" in str(caught.value)


@pytest.mark.parametrize("topic", TOPICS, ids=str)
def test_a_missing_payload_names_the_topic(topic: Topic) -> None:
    with pytest.raises(ValidationError, match=re.escape(f"payload of topic '{topic.value}'")):
        Event.model_validate({"topic": topic.value, "source": "test"})


def test_an_unknown_topic_is_rejected() -> None:
    with pytest.raises(ValidationError, match="topic"):
        Event.model_validate(
            {"topic": "kernel.exploded", "source": "test", "payload": {"anything": 1}}
        )


def test_a_payload_read_from_attributes_is_still_checked_against_the_topic() -> None:
    source = SimpleNamespace(
        id="e1",
        topic=Topic.RUN_PROGRESS,
        trace_id="t1",
        source="test",
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
        payload=payload_for(Topic.TELEMETRY),
    )
    with pytest.raises(ValidationError, match=r"topic 'run\.progress' carries RunProgress, not"):
        Event.model_validate(source, from_attributes=True)
    source.payload = payload_for(Topic.RUN_PROGRESS)
    assert Event.model_validate(source, from_attributes=True).payload == source.payload


def test_ids_and_timestamps_default_to_fresh_values() -> None:
    before = datetime.now(UTC)
    first = Event(
        topic=Topic.RUN_PROGRESS, source="tolaria", payload=payload_for(Topic.RUN_PROGRESS)
    )
    second = Event(
        topic=Topic.RUN_PROGRESS, source="tolaria", payload=payload_for(Topic.RUN_PROGRESS)
    )
    assert first.id != second.id
    assert first.trace_id != second.trace_id
    assert re.fullmatch(r"[0-9a-f]{32}", first.id)
    assert first.created_at.tzinfo is not None
    assert before <= first.created_at <= datetime.now(UTC)


@pytest.mark.parametrize("field", ["id", "traceId", "source"])
def test_envelope_identifiers_are_bounded(field: str) -> None:
    document = json.loads(event().to_json())
    document[field] = "bad id with spaces"
    with pytest.raises(ValidationError, match=field):
        Event.model_validate(document)
