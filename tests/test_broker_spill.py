"""daemon.broker_spill on a real broker: what a group has not committed (and a whole topic) is
read to a file, and produced again with its partitions, order, keys, headers and timestamps."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from daemon.broker_spill import PATTERN, SpillSource, restore, spill
from daemon.embedded import create_topics

pytestmark = pytest.mark.integration


def read_all(broker: str, topic: str, partitions: int) -> dict[int, list]:
    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False,
                             consumer_timeout_ms=1500)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out: dict[int, list] = {p: [] for p in range(partitions)}
    for record in consumer:
        out[record.partition].append(record)
    consumer.close()
    return out


def test_spill_keeps_the_uncommitted_records_and_restore_produces_them_again(broker, tmp_path):
    tag = uuid.uuid4().hex[:8]
    posts, dead, group = f"spill-posts-{tag}", f"spill-dead-{tag}", f"spill-group-{tag}"
    create_topics(broker, [posts, dead], 2)
    producer = KafkaProducer(bootstrap_servers=broker, enable_idempotence=False, acks="all")
    for i in range(40):
        producer.send(posts, f"post {i}".encode(), key=f"k{i}".encode(), partition=i % 2,
                      headers=[("n", str(i).encode())], timestamp_ms=1_700_000_000_000 + i)
    for i in range(3):
        producer.send(dead, f"dead {i}".encode(), partition=0)
    producer.flush()
    producer.close()
    committer = KafkaConsumer(bootstrap_servers=broker, group_id=group,
                              enable_auto_commit=False)
    committer.commit({TopicPartition(posts, 0): OffsetAndMetadata(15, "", -1)})  # 15 of 20
    committer.close()

    result = spill(broker, SpillSource(group, (posts,), (dead,)), tmp_path, timeout=10)
    # partition 0: offsets 15..19; partition 1: nothing committed, all 20; every dead letter
    assert (result.records, result.left) == (5 + 20 + 3, 0)
    assert result.path is not None and result.path.is_file()

    assert restore(broker, tmp_path) == 28
    assert not list(tmp_path.glob(PATTERN))  # removed once acknowledged
    again = read_all(broker, posts, 2)
    assert [r.value for r in again[0][20:]] == [f"post {i}".encode() for i in range(30, 40, 2)]
    assert [r.value for r in again[1][20:]] == [f"post {i}".encode() for i in range(1, 40, 2)]
    first = again[0][20]
    assert (first.key, first.headers, first.timestamp) == (
        b"k30", [("n", b"30")], 1_700_000_000_030)
    assert [r.value for r in read_all(broker, dead, 2)[0]] == [
        f"dead {i}".encode() for i in (0, 1, 2)] * 2


def test_restore_without_a_spill_file_produces_nothing(broker, tmp_path):
    assert restore(broker, tmp_path) == 0
