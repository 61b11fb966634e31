"""What the embedded broker holds, kept across a clean stop.

The embedded Tansu keeps its topics in memory: the build that installs here has no durable
storage engine that works on this machine (docs/RELIABILITY.md says why). So that a clean stop
(SIGTERM, Ctrl-C) loses nothing the broker acknowledged, the daemon, once ingestion has
committed its last batch, reads every record its consumer group has not committed, and the
whole dead-letter topic, into a file under the model dir (fsynced, then renamed into place),
and stops the broker at once: SIGKILL, since memory storage has nothing to flush, and a broker
that is gone acknowledges nothing more. The next start produces those records again, to the
same topic and partition, in their order, with their keys, headers and timestamps, before
anything consumes them; a file is removed only once every one of its records is acknowledged.

A crash or kill -9 has no such moment: what the broker held is then lost, and the start-up
warning says so.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

PATTERN = "broker-spill-*.jsonl"
QUIET_POLLS = 3


@dataclass(frozen=True)
class SpillSource:
    group: str  # the consumer group whose committed offsets say what is still to be read
    topics: tuple[str, ...]  # read from that group's committed offsets
    whole: tuple[str, ...] = ()  # read from the start: nobody here consumes them (dead letters)


@dataclass(frozen=True)
class SpillResult:
    records: int  # written to the file
    left: int  # held by the broker and not read before the time ran out (at least): lost
    path: Path | None


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def spill(bootstrap: str, source: SpillSource, directory: Path, timeout: float,
          stop_broker: Callable[[], None] = lambda: None) -> SpillResult:
    """Read what the broker holds for ``source`` into a new file in ``directory``, for at
    most ``timeout`` seconds: until every partition's position reaches its high watermark.
    ``stop_broker`` runs the moment the read is done (before the file is written), so the
    broker acknowledges as little as possible that was not read."""
    from kafka import KafkaConsumer, TopicPartition

    deadline = time.monotonic() + timeout
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=source.group,
                             enable_auto_commit=False, client_id="tagspace-spill",
                             fetch_max_wait_ms=5, max_poll_records=5000)
    lines: list[str] = []
    try:
        partitions = {t: sorted(consumer.partitions_for_topic(t) or ())
                      for t in (*source.topics, *source.whole)}
        tps = [TopicPartition(t, p) for t, ps in partitions.items() for p in ps]
        consumer.assign(tps)
        for tp in tps:
            committed = consumer.committed(tp) if tp.topic in source.topics else None
            if committed is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        left = _read_to_high_watermarks(consumer, tps, lines, deadline)
    finally:
        stop_broker()
        consumer.close(autocommit=False)
    path = _write(directory, lines) if lines else None
    return SpillResult(len(lines), left, path)


def _read_to_high_watermarks(consumer, tps: list, lines: list[str],  # type: ignore[no-untyped-def]
                             deadline: float) -> int:
    """Poll into ``lines`` until caught up; the records still unread when time runs out.

    A fetch answer's high watermark is the log's end when the broker answered, so a record
    acknowledged since is not in it: caught up counts only after ``QUIET_POLLS`` polls in a
    row brought nothing and left every partition at its high watermark."""
    quiet = 0
    while True:
        polled = consumer.poll(timeout_ms=50)
        for tp, records in polled.items():
            lines.extend(json.dumps({
                "topic": tp.topic, "partition": tp.partition, "offset": r.offset,
                "ts": r.timestamp, "key": _b64(r.key), "value": _b64(r.value),
                "headers": [[k, _b64(v)] for k, v in (r.headers or [])]})
                for r in records)
        behind = 0
        for tp in tps:
            high = consumer.highwater(tp)  # from the latest fetch; exact on Tansu
            if high is None:  # no fetch answered yet for this partition
                behind += 1
                continue
            behind += max(0, high - consumer.position(tp))
        quiet = quiet + 1 if behind == 0 and not polled else 0
        if quiet >= QUIET_POLLS or time.monotonic() >= deadline:
            return behind


def _write(directory: Path, lines: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"broker-spill-{time.time_ns()}.jsonl"
    partial = path.with_suffix(".partial")
    with open(partial, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    partial.rename(path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself
    finally:
        os.close(fd)
    return path


def _records(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def restore(bootstrap: str, directory: Path) -> int:
    """Produce the records of every spill file in ``directory`` again (oldest file first),
    then remove the files. Raises when the broker does not acknowledge them all (the files
    stay for the next start)."""
    files = sorted(directory.glob(PATTERN))
    if not files:
        return 0
    from kafka import KafkaProducer

    # one request in flight per connection: retries cannot reorder a partition's records
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                             retries=5, linger_ms=5, max_in_flight_requests_per_connection=1,
                             client_id="tagspace-restore")
    sent = []
    try:
        partitions: dict[str, list[int]] = {}
        for path in files:
            for r in _records(path):
                topic = r["topic"]
                if topic not in partitions:
                    partitions[topic] = sorted(producer.partitions_for(topic) or [0])
                ps, p = partitions[topic], r["partition"]
                partition = p if p in ps else ps[p % len(ps)]  # fewer partitions than before
                sent.append(producer.send(
                    topic, value=_unb64(r["value"]), key=_unb64(r["key"]),
                    headers=[(k, _unb64(v)) for k, v in r["headers"]] or None,
                    partition=partition, timestamp_ms=r["ts"] if r["ts"] >= 0 else None))
        producer.flush(timeout=60)
        for future in sent:
            future.get(timeout=10)  # raises what the broker answered
    finally:
        producer.close(timeout=5)
    for path in files:
        path.unlink()
    return len(sent)
