"""Kafka record values -> validated posts and interactions, or a reason for the dead-letter topic.

Formats: ``../shared/CONTRACT.md``. Decoding never raises anything but ``InvalidRecord``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from tagspace.dataset import Post, parse_ts, post_from_record

POSITIVE_KINDS = frozenset({"like", "click", "share", "comment"})
KINDS = POSITIVE_KINDS | {"view", "hide"}
MAX_ID_CHARS = 256
MAX_CLOCK_SKEW_S = 24 * 3600.0  # event times may lead arrival by this much (clock skew)
MAX_DEAD_LETTER_BYTES = 512 * 1024  # well under Kafka's default 1 MB message limit


class InvalidRecord(ValueError):
    """``str(e)`` is the reason, a short snake_case code (a metric label value)."""


@dataclass(frozen=True)
class Interaction:
    event_id: str
    user_id: str
    post_id: str
    kind: str
    ts: float

    @property
    def positive(self) -> bool:
        return self.kind in POSITIVE_KINDS


def _load(value: bytes | None, max_bytes: int) -> dict:
    if value is None:
        raise InvalidRecord("empty_value")
    if len(value) > max_bytes:
        raise InvalidRecord("oversize_record")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRecord("invalid_utf8") from None
    try:
        record = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidRecord("invalid_json") from None
    if not isinstance(record, dict):
        raise InvalidRecord("not_an_object")
    if "\\u" in text:  # an escape may be a lone surrogate: valid JSON, not text (nor storable)
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRecord("invalid_unicode") from None
    return record


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")  # NaN / Infinity literals


def printable(value: str) -> bool:
    """An id's characters as every path takes them (Kafka records and the HTTP API): no
    control characters (NUL, CR/LF, escapes) or line separators."""
    return value.isprintable()


def _check_id(record: dict, key: str, required: bool = True) -> None:
    value = record.get(key)
    if value is None and not required:
        return
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise InvalidRecord(f"missing_or_invalid_{key}")
    if not printable(value):
        raise InvalidRecord(f"invalid_{key}_characters")


def decode_post(value: bytes | None, arrival_ts: float, max_bytes: int,
                max_text_chars: int) -> Post:
    record = _load(value, max_bytes)
    for key in ("post_id", "user_id"):
        _check_id(record, key)
    text = record.get("text")
    if isinstance(text, str):
        if len(text) > max_text_chars:
            raise InvalidRecord("oversize_text")
        if "\x00" in text:
            raise InvalidRecord("nul_in_text")
    post = post_from_record(record, arrival_ts, InvalidRecord)
    if not post.tokens and not post.tags:
        raise InvalidRecord("empty_text")
    _not_future(post.ts, arrival_ts)
    return post


def decode_interaction(value: bytes | None, arrival_ts: float, max_bytes: int) -> Interaction:
    record = _load(value, max_bytes)
    for key in ("user_id", "post_id"):
        _check_id(record, key)
    _check_id(record, "event_id", required=False)
    kind = record.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidRecord("invalid_kind")
    ts = parse_ts(record.get("ts"), arrival_ts, InvalidRecord)
    assert ts is not None
    _not_future(ts, arrival_ts)
    event_id = record.get("event_id") or _derived_id(record["user_id"], record["post_id"],
                                                     kind, float(ts))
    return Interaction(event_id, record["user_id"], record["post_id"], kind, float(ts))


def _not_future(ts: float | None, arrival_ts: float) -> None:
    # An event time far past its arrival would pin the post as "newest" (feeds, LRU) forever.
    if ts is not None and ts > arrival_ts + MAX_CLOCK_SKEW_S:
        raise InvalidRecord("future_ts")


def _derived_id(user_id: str, post_id: str, kind: str, ts: float) -> str:
    # The contract: a missing event_id is derived from the other fields (so replays dedupe).
    raw = json.dumps([user_id, post_id, kind, ts]).encode()
    return "derived:" + hashlib.sha256(raw).hexdigest()[:32]


def dead_letter(value: bytes | None, reason: str, topic: str, partition: int,
                offset: int, max_bytes: int) -> bytes:
    """The dead-letter record: the reason, the source (where the full original stays, within
    the topic's retention), and the original value (as text where it was UTF-8, else hex),
    cut to ``max_bytes`` so that the dead letter itself fits in a Kafka message."""
    raw = value or b""
    truncated = len(raw) > max_bytes
    raw = raw[:max_bytes]
    try:
        original, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:  # invalid, or a cut through a multi-byte character
        original, encoding = raw.hex(), "hex"
    letter = {"reason": reason, "topic": topic, "partition": partition, "offset": offset,
              "value": original, "value_encoding": encoding, "value_truncated": truncated}
    out = json.dumps(letter, ensure_ascii=False).encode()
    if len(out) > MAX_DEAD_LETTER_BYTES:  # hex or escaped control characters grow it up to 6x
        letter |= {"value": original[: MAX_DEAD_LETTER_BYTES // 8], "value_truncated": True}
        out = json.dumps(letter, ensure_ascii=False).encode()
    return out
