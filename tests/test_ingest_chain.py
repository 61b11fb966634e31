"""The ingestion steps and their chain with in-memory fakes: no broker, no Redis."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import redis
from kafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError
from kafka.structs import TopicPartition

from daemon import ingest_steps
from daemon.chain import Batch, MessageRejected, Stage
from daemon.config import Settings
from daemon.ingest import Ingestor, build_chain
from daemon.ingest_steps import (
    Commit,
    Decode,
    Embed,
    Evaluate,
    Learn,
    PrequentialSample,
    SendDeadLetters,
)
from daemon.metrics import Metrics
from daemon.store import WriteResult
from daemon.store_step import StoreBatch
from tagspace.online import Prediction
from tests.test_online import post

S = Settings()
POSTS = TopicPartition(S.posts_topic, 0)
EVENTS = TopicPartition(S.interactions_topic, 1)


def record(tp: TopicPartition, offset: int, value: object) -> SimpleNamespace:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=offset,
                           timestamp=1_700_000_000_000 + offset, value=raw)


def a_post(i: int, tags: list[str] | None = None) -> dict:
    return {"post_id": f"p{i}", "user_id": "u1", "text": "maple syrup pancakes",
            "tags": tags or [], "ts": 1_700_000_000.0 + i}


class Sink:
    """The last step, recording what reaches it; rejects the first ``reject`` offers."""

    def __init__(self, reject: int = 0):
        self.batches: list[Batch] = []
        self.reject, self.offers, self.closed = reject, 0, False

    def submit(self, batch: Batch) -> None:
        self.offers += 1
        if self.reject:
            self.reject -= 1
            raise MessageRejected
        self.batches.append(batch)

    def poll(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# --- the chain's mechanics --------------------------------------------------------------------

class Count(Stage):
    def __init__(self, next_step):  # type: ignore[no-untyped-def]
        super().__init__(next_step)
        self.applied = 0

    def apply(self, batch: Batch) -> None:
        self.applied += 1


def test_a_rejected_batch_is_held_offered_again_and_new_ones_refused_meanwhile() -> None:
    sink = Sink(reject=2)
    step = Count(sink)
    first, second = Batch({}), Batch({})
    step.submit(first)  # taken: the work is done once, the batch held
    assert step.applied == 1 and sink.batches == []
    with pytest.raises(MessageRejected):
        step.submit(second)  # refused while one is held: the rejection travels back
    step.poll()  # offered again: rejected a second time
    assert sink.batches == []
    step.poll()
    assert sink.batches == [first] and step.applied == 1
    step.submit(second)
    assert sink.batches == [first, second]


# --- the steps --------------------------------------------------------------------------------

def test_decode_keeps_valid_records_and_makes_dead_letters_of_the_rest() -> None:
    metrics, sink = Metrics(), Sink()
    batch = Batch({POSTS: [record(POSTS, 0, a_post(1, ["breakfast"])),
                           record(POSTS, 1, b"{not json"), record(POSTS, 2, [1, 2])],
                   EVENTS: [record(EVENTS, 7, {"event_id": "e1", "user_id": "u1",
                                               "post_id": "p1", "kind": "like",
                                               "ts": 1_700_000_000.0})]})
    Decode(sink, S, metrics).submit(batch)
    assert [p.post_id for p, _ in batch.posts] == ["p1"]
    assert [e.event_id for e in batch.interactions] == ["e1"]
    reasons = [json.loads(letter)["reason"] for _, letter in batch.dead]
    assert reasons == ["invalid_json", "not_an_object"]
    assert sample(metrics, "tagspace_records_invalid_total", topic=S.posts_topic,
                  reason="invalid_json") == 1
    assert sink.batches == [batch]


class FakeProducer:
    def __init__(self, errors: list[Exception]):
        self.errors, self.sent, self.closed = errors, [], 0

    def send(self, topic, value):  # type: ignore[no-untyped-def]
        self.sent.append((topic, value))
        return SimpleNamespace(get=lambda timeout: None)

    def flush(self, timeout):  # type: ignore[no-untyped-def]
        if self.errors:
            raise self.errors.pop(0)

    def close(self, timeout):  # type: ignore[no-untyped-def]
        self.closed += 1


def dead_batch() -> Batch:
    return Batch({POSTS: [record(POSTS, 3, b"x")]}, dead=[(S.posts_topic, b"letter")])


def test_dead_letters_go_on_only_once_acknowledged_a_failing_broker_rejects_the_batch() -> None:
    metrics, sink = Metrics(), Sink()
    producers = [FakeProducer([KafkaTimeoutError()]), FakeProducer([])]
    step = SendDeadLetters(sink, S, metrics, make_producer=lambda: producers.pop(0))
    with pytest.raises(MessageRejected):
        step.submit(dead_batch())
    assert sink.batches == [] and sample(metrics, "tagspace_records_dead_lettered_total",
                                         topic=S.posts_topic) is None
    with pytest.raises(MessageRejected):  # backing off: not even tried
        step.submit(dead_batch())
    deadline = time.monotonic() + 5
    while not step.retry.due() and time.monotonic() < deadline:
        time.sleep(0.02)
    step.submit(dead_batch())  # a fresh producer, which the broker acknowledges
    assert len(sink.batches) == 1
    assert sample(metrics, "tagspace_records_dead_lettered_total", topic=S.posts_topic) == 1


def test_dead_letters_refused_for_good_are_counted_and_never_block() -> None:
    metrics, sink = Metrics(), Sink()
    step = SendDeadLetters(sink, S, metrics,
                           make_producer=lambda: FakeProducer([TopicAuthorizationFailedError()]))
    for _ in range(3):
        step.retry._at = 0.0  # no waiting out the backoff in a unit test
        try:
            step.submit(dead_batch())
        except MessageRejected:
            continue
    assert len(sink.batches) == 1  # the third refusal: counted, and the batch went on
    assert sample(metrics, "tagspace_records_invalid_total", topic=S.dead_letter_topic,
                  reason="dead_letter_refused") == 1


class FlakyStore:
    """Down for the first ``down`` writes; refuses any batch holding post ``bad``."""

    def __init__(self, metrics: Metrics, down: int = 0, bad: str = ""):
        self.metrics, self.down, self.bad = metrics, down, bad
        self.paused_at_call: list[float | None] = []
        self.write_ids: set[str] = set()

    def write(self, posts, version, interactions, write_id=""):  # type: ignore[no-untyped-def]
        self.paused_at_call.append(sample(self.metrics, "tagspace_consumer_paused"))
        self.write_ids.add(write_id)
        if self.down:
            self.down -= 1
            raise redis.ConnectionError("down")
        if any(p.post_id == self.bad for p, _ in posts):
            raise redis.ResponseError("script refused")
        return WriteResult([True] * len(posts), [True] * len(interactions))


def posts_batch(n: int) -> Batch:
    posts = [(post(i, "maple syrup", ["breakfast"]), time.time()) for i in range(n)]
    return Batch({POSTS: [record(POSTS, i, b"") for i in range(n)]}, posts=posts,
                 embeddings=np.zeros((n, 4), np.float32), version=3)


def test_the_store_rejects_while_redis_is_down_and_says_so_in_the_paused_gauge() -> None:
    metrics, sink = Metrics(), Sink()
    store = FlakyStore(metrics, down=1)
    states: list[bool] = []
    step = StoreBatch(sink, store, S, metrics, on_redis_state=states.append)  # type: ignore[arg-type]
    batch = posts_batch(2)
    with pytest.raises(MessageRejected):
        step.submit(batch)
    step.retry._at = 0.0
    step.submit(batch)
    assert store.paused_at_call == [0.0, 1.0]  # paused while Redis refused the batch...
    assert sample(metrics, "tagspace_consumer_paused") == 0  # ...and no longer once it took it
    assert states == [False, True] and store.write_ids == {batch.write_id}  # one id: a retry
    assert batch.stored == WriteResult([True, True], []) and sink.batches == [batch]
    assert sample(metrics, "tagspace_records_applied_total", topic=S.posts_topic) == 2


def test_a_record_redis_refuses_is_counted_and_skipped_and_the_others_are_stored() -> None:
    metrics, sink = Metrics(), Sink()
    step = StoreBatch(sink, FlakyStore(metrics, bad="p1"), S, metrics)  # type: ignore[arg-type]
    batch = posts_batch(3)
    step.submit(batch)
    assert batch.stored is not None and batch.stored.post_is_new == [True, False, True]
    assert sample(metrics, "tagspace_records_invalid_total", topic=S.posts_topic,
                  reason="store_error") == 1
    assert [p.post_id for p in batch.learnable()] == ["p0", "p2"]


def test_a_failed_vocabulary_update_counts_its_tagged_posts_and_never_raises() -> None:
    def observe(post, clock):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    metrics, sink = Metrics(), Sink()
    hub = SimpleNamespace(online=SimpleNamespace(observe=observe))
    batch = Batch({}, posts=[(post(1, "maple syrup", ["breakfast"]), 0.0),
                             (post(2, "no tags", []), 0.0), (post(3, "pancakes", ["b"]), 0.0)])
    Learn(sink, hub, SimpleNamespace(), metrics).submit(batch)  # type: ignore[arg-type]
    assert sample(metrics, "tagspace_training_posts_skipped_total", reason="error") == 2
    assert sink.batches == [batch]


def fake_online(asked: list[int]) -> SimpleNamespace:
    def embed_and_evaluate(posts, evaluate, bf16=False):  # type: ignore[no-untyped-def]
        asked.append(evaluate)
        n = min(evaluate, sum(1 for p in posts if p.tags))
        return np.ones((len(posts), 4), np.float32), [Prediction(True, 1, 1)] * n
    return SimpleNamespace(embed_and_evaluate=embed_and_evaluate)


def test_prequential_scoring_is_a_bounded_sample_per_second() -> None:
    asked: list[int] = []
    metrics = Metrics()
    hub = SimpleNamespace(online=fake_online(asked), version=5)
    step = Embed(Sink(), hub, PrequentialSample(metrics))  # type: ignore[arg-type]
    for _ in range(5):  # back to back: the first batch takes the burst, then only the refill
        batch = Batch({}, posts=[(post(i, "maple syrup", ["breakfast"]), 0.0)
                                 for i in range(100)])
        step.submit(batch)
        assert batch.embeddings is not None and batch.embeddings.shape == (100, 4)
        assert batch.version == 5
    assert asked[0] == ingest_steps.EVAL_PER_BATCH
    assert sum(asked[1:]) <= 4  # 5 calls within well under a second at 20 posts/s
    assert sample(metrics, "tagspace_online_evaluated_posts_total") == sum(asked)


def test_the_trainer_role_scores_only_its_sample() -> None:
    asked: list[int] = []
    hub = SimpleNamespace(online=fake_online(asked))
    batch = Batch({}, posts=[(post(i, "maple", ["b"] if i % 2 else []), 0.0) for i in range(9)])
    Evaluate(Sink(), hub, PrequentialSample(Metrics())).submit(batch)  # type: ignore[arg-type]
    assert asked == [ingest_steps.EVAL_PER_BATCH] and batch.embeddings is None


class FakeConsumer:
    """Scripted polls; records pauses, resumes and commits."""

    def __init__(self, polls: list[dict], stop: threading.Event):
        self.polls, self.stop = polls, stop
        self.commits: list[dict] = []
        self._paused: set = set()
        self.pauses = 0

    def poll(self, timeout_ms):  # type: ignore[no-untyped-def]
        if self._paused:
            return {}
        if not self.polls:
            self.stop.set()
            return {}
        return self.polls.pop(0)

    def assignment(self) -> set:
        return {POSTS, EVENTS}

    def pause(self, *tps) -> None:  # type: ignore[no-untyped-def]
        self.pauses += 1
        self._paused |= set(tps)

    def paused(self) -> set:
        return set(self._paused)

    def resume(self, *tps) -> None:  # type: ignore[no-untyped-def]
        self._paused -= set(tps)

    def commit(self, offsets) -> None:  # type: ignore[no-untyped-def]
        self.commits.append({tp: o.offset for tp, o in offsets.items()})

    def highwater(self, tp):  # type: ignore[no-untyped-def]
        return None


def test_commit_is_past_each_partitions_last_record() -> None:
    consumer = FakeConsumer([], threading.Event())
    Commit(consumer, Metrics()).submit(Batch({POSTS: [record(POSTS, 4, b""),
                                                      record(POSTS, 5, b"")],
                                              EVENTS: [record(EVENTS, 9, b"")]}))
    assert consumer.commits == [{POSTS: 6, EVENTS: 10}]


def test_rejection_pauses_the_consumer_and_the_batches_still_go_through_in_order() -> None:
    stop = threading.Event()
    polls = [{POSTS: [record(POSTS, i, b"")]} for i in range(3)]
    consumer = FakeConsumer(polls, stop)
    sink = Sink(reject=3)
    chain = Count(sink)
    Ingestor(S, None, None, None, Metrics())._consume(consumer, chain, stop)  # type: ignore[arg-type]
    assert consumer.pauses >= 1 and not consumer.paused()  # paused, then resumed
    offsets = [b.records[POSTS][0].offset for b in sink.batches]
    assert offsets == [0, 1, 2] and chain.applied == 3  # each batch processed once, in order


def steps_of(chain) -> list[str]:  # type: ignore[no-untyped-def]
    names = []
    while chain is not None:
        names.append(type(chain).__name__)
        chain = getattr(chain, "next", None)
    return names


@pytest.mark.parametrize(("role", "trains", "expected"), [
    ("all", True, ["Decode", "SendDeadLetters", "Embed", "StoreBatch", "Learn", "Commit"]),
    ("all", False, ["Decode", "SendDeadLetters", "Embed", "StoreBatch", "Commit"]),
    ("serve", False, ["Decode", "SendDeadLetters", "Embed", "StoreBatch", "Commit"]),
    ("trainer", True, ["Decode", "Evaluate", "Learn", "Commit"]),
])
def test_each_role_is_its_own_chain_with_the_commit_last(role, trains, expected) -> None:  # type: ignore[no-untyped-def]
    trainer = SimpleNamespace() if trains else None
    chain = build_chain(Settings(role=role), FakeConsumer([], threading.Event()), None,  # type: ignore[arg-type]
                        SimpleNamespace(), trainer, Metrics(), make_producer=lambda: None)  # type: ignore[arg-type]
    assert steps_of(chain) == expected
