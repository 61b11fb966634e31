"""daemon.records: Kafka values -> posts / interactions, or an InvalidRecord reason.

The formats are ``../shared/CONTRACT.md``'s; the reasons are metric label values, so each
malformed record below asserts the exact reason string.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from daemon.records import (
    KINDS,
    MAX_ID_CHARS,
    POSITIVE_KINDS,
    Interaction,
    InvalidRecord,
    dead_letter,
    decode_interaction,
    decode_post,
)
from tagspace.dataset import Post

MAX_BYTES = 64 * 1024  # the daemon's defaults (daemon.config.Settings)
MAX_TEXT = 5000
BIG = 8 * 1024 * 1024  # for records that must get past the size check
ARRIVAL = 1_700_000_123.25


def enc(record: object) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode()


def post_value(**fields: object) -> bytes:
    """A valid post record with ``fields`` replaced (a value of ``...`` drops the field)."""
    record: dict[str, object] = {"post_id": "p1", "user_id": "u1", "ts": 1700000000.5,
                                 "text": "Crazy commute this am #nyc #snow"}
    record.update(fields)
    return enc({k: v for k, v in record.items() if v is not ...})


def interaction_value(**fields: object) -> bytes:
    record: dict[str, object] = {"event_id": "e1", "user_id": "u2", "post_id": "p1",
                                 "kind": "like", "ts": 1700000100}
    record.update(fields)
    return enc({k: v for k, v in record.items() if v is not ...})


def raw_post(ts_literal: str) -> bytes:
    """A post whose ``ts`` is a raw JSON literal (json.dumps cannot write NaN & co. as we want)."""
    return b'{"post_id": "p1", "user_id": "u1", "text": "hi", "ts": ' + ts_literal.encode() + b"}"


def raw_interaction(ts_literal: str) -> bytes:
    return (b'{"user_id": "u2", "post_id": "p1", "kind": "like", "ts": '
            + ts_literal.encode() + b"}")


DEEP_LISTS = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECTS = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
ONE_MB_TEXT = "a" * (1 << 20)

# Shared by both decoders: the envelope (bytes -> JSON object).
ENVELOPE_CASES = [
    pytest.param(None, "empty_value", id="none-value"),
    pytest.param(b"", "invalid_json", id="empty-bytes"),
    pytest.param(b"   \n", "invalid_json", id="whitespace-only"),
    pytest.param(b"{", "invalid_json", id="truncated-object"),
    pytest.param(b"not json at all", "invalid_json", id="plain-text"),
    pytest.param(b"{'post_id': 'p1'}", "invalid_json", id="single-quotes"),
    pytest.param(b'{"post_id": "p1",}', "invalid_json", id="trailing-comma"),
    pytest.param(b'{"a": 1} trailing', "invalid_json", id="trailing-garbage"),
    pytest.param(b'{"a": 1}\n{"a": 2}', "invalid_json", id="two-objects-jsonl"),
    pytest.param(b'\xef\xbb\xbf{"a": 1}', "invalid_json", id="utf8-bom"),
    pytest.param(b'{"ts": ' + b"9" * 5000 + b"}", "invalid_json", id="int-over-4300-digits"),
    pytest.param(DEEP_LISTS, "invalid_json", id="100000-nested-lists"),
    pytest.param(DEEP_OBJECTS, "invalid_json", id="100000-nested-objects"),
    pytest.param(raw_post("NaN"), "invalid_json", id="nan-literal"),
    pytest.param(raw_post("Infinity"), "invalid_json", id="infinity-literal"),
    pytest.param(raw_post("-Infinity"), "invalid_json", id="minus-infinity-literal"),
    pytest.param(b"[]", "not_an_object", id="empty-list"),
    pytest.param(b'[{"post_id": "p1"}]', "not_an_object", id="list-of-object"),
    pytest.param(b"42", "not_an_object", id="integer"),
    pytest.param(b"-3.5e2", "not_an_object", id="float"),
    pytest.param(b'"a string"', "not_an_object", id="string"),
    pytest.param(b"null", "not_an_object", id="null"),
    pytest.param(b"true", "not_an_object", id="boolean"),
    pytest.param(b"\xff\xfe{}", "invalid_utf8", id="invalid-utf8-start"),
    pytest.param(b'{"text": "caf\xc3"}', "invalid_utf8", id="truncated-multibyte"),
    pytest.param(b'{"text": "\xc0\xaf"}', "invalid_utf8", id="overlong-encoding"),
    pytest.param(b'{"text": "\xed\xa0\x80"}', "invalid_utf8", id="encoded-surrogate"),
    pytest.param(b'{"text": "latin-1 caf\xe9"}', "invalid_utf8", id="latin-1"),
]

POST_CASES = [
    # ids
    pytest.param(post_value(post_id=...), "missing_or_invalid_post_id", id="no-post_id"),
    pytest.param(post_value(post_id=None), "missing_or_invalid_post_id", id="null-post_id"),
    pytest.param(post_value(post_id=17), "missing_or_invalid_post_id", id="int-post_id"),
    pytest.param(post_value(post_id=True), "missing_or_invalid_post_id", id="bool-post_id"),
    pytest.param(post_value(post_id=["p1"]), "missing_or_invalid_post_id", id="list-post_id"),
    pytest.param(post_value(post_id={"id": "p1"}), "missing_or_invalid_post_id",
                 id="object-post_id"),
    pytest.param(post_value(post_id=""), "missing_or_invalid_post_id", id="empty-post_id"),
    pytest.param(post_value(post_id="p" * (MAX_ID_CHARS + 1)), "missing_or_invalid_post_id",
                 id="257-char-post_id"),
    pytest.param(post_value(post_id="p\n1"), "invalid_post_id_characters", id="newline-post_id"),
    pytest.param(post_value(post_id="p\x001"), "invalid_post_id_characters", id="nul-post_id"),
    pytest.param(post_value(post_id="\x1b[31mp1"), "invalid_post_id_characters",
                 id="ansi-escape-post_id"),
    pytest.param(post_value(post_id="p\u20281"), "invalid_post_id_characters",
                 id="line-separator-post_id"),
    pytest.param(post_value(post_id="p\x7f"), "invalid_post_id_characters", id="del-post_id"),
    pytest.param(post_value(user_id=...), "missing_or_invalid_user_id", id="no-user_id"),
    pytest.param(post_value(user_id=3.5), "missing_or_invalid_user_id", id="float-user_id"),
    pytest.param(post_value(user_id=""), "missing_or_invalid_user_id", id="empty-user_id"),
    pytest.param(post_value(user_id="u" * 1000), "missing_or_invalid_user_id",
                 id="1000-char-user_id"),
    pytest.param(post_value(user_id="u\t1"), "invalid_user_id_characters", id="tab-user_id"),
    pytest.param(post_value(post_id=..., user_id=...), "missing_or_invalid_post_id",
                 id="no-ids-post_id-first"),
    # text
    pytest.param(post_value(text=...), "missing_or_invalid_text", id="no-text"),
    pytest.param(post_value(text=None), "missing_or_invalid_text", id="null-text"),
    pytest.param(post_value(text=12), "missing_or_invalid_text", id="int-text"),
    pytest.param(post_value(text=["a", "b"]), "missing_or_invalid_text", id="list-text"),
    pytest.param(post_value(text={"body": "hi"}), "missing_or_invalid_text", id="object-text"),
    pytest.param(post_value(text="hello\x00world"), "nul_in_text", id="nul-in-text"),
    pytest.param(post_value(text="x" * (MAX_TEXT + 1)), "oversize_text", id="text-over-max"),
    pytest.param(post_value(text=""), "empty_text", id="empty-text"),
    pytest.param(post_value(text="   \n\t "), "empty_text", id="blank-text"),
    pytest.param(post_value(text="\u200b\u200d\ufeff"), "empty_text", id="invisible-text"),
    pytest.param(post_value(text="", tags=[]), "empty_text", id="empty-text-empty-tags"),
    pytest.param(post_value(text="", tags=["  ", "#"]), "empty_text", id="empty-text-blank-tags"),
    # tags
    pytest.param(post_value(tags="nyc"), "invalid_tags", id="string-tags"),
    pytest.param(post_value(tags={"nyc": 1}), "invalid_tags", id="object-tags"),
    pytest.param(post_value(tags=[1, 2]), "invalid_tags", id="int-tags"),
    pytest.param(post_value(tags=["nyc", None]), "invalid_tags", id="null-in-tags"),
    pytest.param(post_value(tags=[["nyc"]]), "invalid_tags", id="nested-tags"),
    pytest.param(post_value(tags=7), "invalid_tags", id="number-tags"),
    pytest.param(post_value(tags=[f"t{i}" for i in range(10_000)]), "too_many_tags",
                 id="10000-tags"),
    pytest.param(post_value(tags=[f"t{i}" for i in range(65)]), "too_many_tags",
                 id="65-tags"),
    pytest.param(post_value(text=" ".join(f"#{i:x}" for i in range(936)), tags=...),
                 "too_many_tags", id="936-hashtags-in-text"),
    pytest.param(post_value(text="x " + " ".join(f"#t{i}" for i in range(65)), tags=None),
                 "too_many_tags", id="65-hashtags-in-text-null-tags"),
    pytest.param(post_value(tags=["nyc", "a\x00b"]), "invalid_tag_characters", id="nul-in-tag"),
    pytest.param(post_value(tags=["new\nyork"]), "invalid_tag_characters", id="newline-in-tag"),
    pytest.param(post_value(tags=["\x1b[31mred"]), "invalid_tag_characters",
                 id="ansi-escape-tag"),
    pytest.param(post_value(tags=["ice cream"]), "invalid_tag_characters", id="space-in-tag"),
    pytest.param(post_value(tags=["t" * 101]), "oversize_tag", id="101-char-tag"),
    pytest.param(post_value(text="so #" + "t" * 101, tags=...), "oversize_tag",
                 id="101-char-hashtag-in-text"),
    # ts
    pytest.param(post_value(ts=-1), "invalid_ts", id="negative-ts"),
    pytest.param(post_value(ts=-0.001), "invalid_ts", id="slightly-negative-ts"),
    pytest.param(post_value(ts=True), "invalid_ts", id="true-ts"),
    pytest.param(post_value(ts=False), "invalid_ts", id="false-ts"),
    pytest.param(post_value(ts=[1700000000]), "invalid_ts", id="list-ts"),
    pytest.param(post_value(ts={"s": 1}), "invalid_ts", id="object-ts"),
    pytest.param(post_value(ts="yesterday"), "invalid_ts", id="word-ts"),
    pytest.param(post_value(ts="NaN"), "invalid_ts", id="nan-string-ts"),
    pytest.param(post_value(ts=""), "invalid_ts", id="empty-string-ts"),
    pytest.param(post_value(ts="1700000000"), "invalid_ts", id="digits-string-ts"),
    pytest.param(post_value(ts="0001-01-01T00:00:00"), "invalid_ts", id="year-1-ts"),
    pytest.param(raw_post("1e400"), "invalid_ts", id="float-overflow-inf-ts"),
    pytest.param(raw_post("-1e400"), "invalid_ts", id="float-overflow-minus-inf-ts"),
    pytest.param(raw_post("1" + "0" * 400), "invalid_ts", id="int-too-big-for-float-ts"),
]

INTERACTION_CASES = [
    pytest.param(interaction_value(user_id=...), "missing_or_invalid_user_id", id="no-user_id"),
    pytest.param(interaction_value(user_id=5), "missing_or_invalid_user_id", id="int-user_id"),
    pytest.param(interaction_value(user_id=""), "missing_or_invalid_user_id", id="empty-user_id"),
    pytest.param(interaction_value(user_id="u" * 257), "missing_or_invalid_user_id",
                 id="257-char-user_id"),
    pytest.param(interaction_value(user_id="u\r2"), "invalid_user_id_characters",
                 id="cr-user_id"),
    pytest.param(interaction_value(user_id=..., post_id=...), "missing_or_invalid_user_id",
                 id="no-ids-user_id-first"),
    pytest.param(interaction_value(post_id=...), "missing_or_invalid_post_id", id="no-post_id"),
    pytest.param(interaction_value(post_id=[]), "missing_or_invalid_post_id", id="list-post_id"),
    pytest.param(interaction_value(post_id="p\x00"), "invalid_post_id_characters",
                 id="nul-post_id"),
    pytest.param(interaction_value(event_id=""), "missing_or_invalid_event_id",
                 id="empty-event_id"),
    pytest.param(interaction_value(event_id=42), "missing_or_invalid_event_id",
                 id="int-event_id"),
    pytest.param(interaction_value(event_id=False), "missing_or_invalid_event_id",
                 id="false-event_id"),
    pytest.param(interaction_value(event_id="e" * 257), "missing_or_invalid_event_id",
                 id="257-char-event_id"),
    pytest.param(interaction_value(event_id="e\x0b1"), "invalid_event_id_characters",
                 id="vtab-event_id"),
    pytest.param(interaction_value(kind=...), "invalid_kind", id="no-kind"),
    pytest.param(interaction_value(kind=None), "invalid_kind", id="null-kind"),
    pytest.param(interaction_value(kind="unlike"), "invalid_kind", id="unknown-kind"),
    pytest.param(interaction_value(kind="LIKE"), "invalid_kind", id="uppercase-kind"),
    pytest.param(interaction_value(kind=" like"), "invalid_kind", id="padded-kind"),
    pytest.param(interaction_value(kind=""), "invalid_kind", id="empty-kind"),
    pytest.param(interaction_value(kind=1), "invalid_kind", id="int-kind"),
    pytest.param(interaction_value(kind=True), "invalid_kind", id="bool-kind"),
    pytest.param(interaction_value(kind=["like"]), "invalid_kind",
                 id="list-kind"),
    pytest.param(interaction_value(kind={"k": "like"}), "invalid_kind",
                 id="object-kind"),
    pytest.param(interaction_value(ts=-5), "invalid_ts", id="negative-ts"),
    pytest.param(interaction_value(ts=True), "invalid_ts", id="bool-ts"),
    pytest.param(interaction_value(ts="soon"), "invalid_ts", id="word-ts"),
    pytest.param(interaction_value(ts=[1]), "invalid_ts", id="list-ts"),
    pytest.param(raw_interaction("1e999"), "invalid_ts", id="inf-ts"),
    pytest.param(raw_interaction("NaN"), "invalid_json", id="nan-literal-ts"),
    pytest.param(raw_interaction("-Infinity"), "invalid_json", id="minus-infinity-literal-ts"),
]


def reason_of(call, *args: object) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRecord) as info:
        call(*args)
    return str(info.value)


# --- malformed records -------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "reason"), ENVELOPE_CASES + POST_CASES)
def test_decode_post_rejects(value: bytes | None, reason: str) -> None:
    assert reason_of(decode_post, value, ARRIVAL, BIG, MAX_TEXT) == reason


@pytest.mark.parametrize(("value", "reason"), ENVELOPE_CASES + INTERACTION_CASES)
def test_decode_interaction_rejects(value: bytes | None, reason: str) -> None:
    assert reason_of(decode_interaction, value, ARRIVAL, BIG) == reason


def test_invalid_record_is_a_value_error_whose_str_is_the_reason() -> None:
    err = InvalidRecord("invalid_json")
    assert isinstance(err, ValueError) and str(err) == "invalid_json"


def test_oversize_record_is_checked_before_anything_else() -> None:
    for extra in (1, 1000):
        junk = b"\xff" * (MAX_BYTES + extra)  # invalid UTF-8 too: size comes first
        assert reason_of(decode_post, junk, ARRIVAL, MAX_BYTES, MAX_TEXT) == "oversize_record"
        assert reason_of(decode_interaction, junk, ARRIVAL, MAX_BYTES) == "oversize_record"


def test_record_of_exactly_max_bytes_is_accepted_one_more_is_not() -> None:
    base = post_value(text="")
    pad = MAX_BYTES - len(base)
    exact = post_value(text="a" * pad)
    assert len(exact) == MAX_BYTES
    assert decode_post(exact, ARRIVAL, MAX_BYTES, MAX_BYTES).tokens == ("a" * pad,)
    over = post_value(text="a" * (pad + 1))
    assert reason_of(decode_post, over, ARRIVAL, MAX_BYTES, MAX_BYTES) == "oversize_record"


def test_max_bytes_counts_bytes_not_characters() -> None:
    text = "é" * 40_000  # 40,000 characters, 80,000 bytes
    value = post_value(text=text)
    assert reason_of(decode_post, value, ARRIVAL, MAX_BYTES, 10**6) == "oversize_record"
    assert decode_post(value, ARRIVAL, BIG, 40_000).tokens == (text,)


def test_one_megabyte_text() -> None:
    value = post_value(text=ONE_MB_TEXT)
    assert reason_of(decode_post, value, ARRIVAL, MAX_BYTES, MAX_TEXT) == "oversize_record"
    assert reason_of(decode_post, value, ARRIVAL, BIG, MAX_TEXT) == "oversize_text"


def test_text_of_exactly_max_text_chars_is_accepted() -> None:
    post = decode_post(post_value(text="x" * MAX_TEXT), ARRIVAL, BIG, MAX_TEXT)
    assert post.tokens == ("x" * MAX_TEXT,)


def test_ids_of_exactly_max_id_chars_are_accepted() -> None:
    post_id, user_id = "p" * MAX_ID_CHARS, "u" * MAX_ID_CHARS
    post = decode_post(post_value(post_id=post_id, user_id=user_id), ARRIVAL, BIG, MAX_TEXT)
    assert (post.post_id, post.user_id) == (post_id, user_id)
    event = decode_interaction(interaction_value(event_id="e" * MAX_ID_CHARS, user_id=user_id,
                                                 post_id=post_id), ARRIVAL, BIG)
    assert event.event_id == "e" * MAX_ID_CHARS


def test_printable_unicode_ids_are_accepted() -> None:
    post = decode_post(post_value(post_id="post 1 café 東京 🎉", user_id="ünïcode"),
                       ARRIVAL, BIG, MAX_TEXT)
    assert post.post_id == "post 1 café 東京 🎉" and post.user_id == "ünïcode"


def test_decoded_post_strings_are_utf8_encodable() -> None:
    value = b'{"post_id": "p1", "user_id": "u1", "text": "hi", "tags": ["ok\\ud800"]}'
    try:
        post = decode_post(value, ARRIVAL, BIG, MAX_TEXT)
    except InvalidRecord:
        return
    for s in (post.post_id, post.user_id, *post.tags, *post.tokens):
        s.encode("utf-8")


# --- valid records -----------------------------------------------------------------------------

def test_contract_example_post() -> None:
    value = enc({"post_id": "p1", "user_id": "u1", "ts": 1700000000.5,
                 "text": "Crazy commute this am #nyc #snow", "tags": ["nyc", "snow"]})
    post = decode_post(value, ARRIVAL, MAX_BYTES, MAX_TEXT)
    assert post == Post("p1", "u1", 1700000000.5, ("crazy", "commute", "this", "am"),
                        ("nyc", "snow"))


def test_unknown_extra_fields_are_accepted() -> None:
    post = decode_post(post_value(lang="en", meta={"a": [1, None, {"b": 2.5}]}, likes=3),
                       ARRIVAL, MAX_BYTES, MAX_TEXT)
    assert post.post_id == "p1"
    event = decode_interaction(interaction_value(source="app", weight=0.5, extra=None),
                               ARRIVAL, MAX_BYTES)
    assert event == Interaction("e1", "u2", "p1", "like", 1700000100.0)


def test_missing_tags_come_from_the_text_lowercased_and_removed_from_tokens() -> None:
    post = decode_post(post_value(text="Snow day in #NYC again #Snow #nyc", tags=...),
                       ARRIVAL, MAX_BYTES, MAX_TEXT)
    assert post.tags == ("nyc", "snow")
    assert post.tokens == ("snow", "day", "in", "again")
    assert not any("#" in t for t in post.tokens)


def test_null_tags_count_as_missing() -> None:
    post = decode_post(post_value(text="hi #There", tags=None), ARRIVAL, MAX_BYTES, MAX_TEXT)
    assert post.tags == ("there",)


def test_given_tags_are_normalised_and_deduplicated() -> None:
    post = decode_post(post_value(text="no hashtags here", tags=["#NYC", "snow", "nyc", " Snow "]),
                       ARRIVAL, MAX_BYTES, MAX_TEXT)
    assert post.tags == ("nyc", "snow")
    assert post.tokens == ("no", "hashtags", "here")


def test_list_tags_and_text_hashtags_are_normalised_alike_nfkc_and_lowercase() -> None:
    given = decode_post(post_value(text="x", tags=["\uff2e\uff39\uff23", "Caf\u00e9"]),
                        ARRIVAL, MAX_BYTES, MAX_TEXT)
    extracted = decode_post(post_value(text="x #\uff2e\uff39\uff23 #Cafe\u0301", tags=...),
                            ARRIVAL, MAX_BYTES, MAX_TEXT)
    assert given.tags == extracted.tags == ("nyc", "caf\u00e9")  # full-width; combining accent


def test_tags_at_the_caps_are_accepted() -> None:
    text = " ".join(f"#t{i}" for i in range(64)) + " #" + "t" * 100
    with pytest.raises(InvalidRecord, match="too_many_tags"):  # 65 distinct hashtags
        decode_post(post_value(text=text, tags=...), ARRIVAL, MAX_BYTES, MAX_TEXT)
    post = decode_post(post_value(text=" ".join(f"#T{i} #t{i}" for i in range(64)), tags=...),
                       ARRIVAL, MAX_BYTES, MAX_TEXT)
    assert len(post.tags) == 64  # "T1" and "t1" are one tag
    long = decode_post(post_value(tags=["t" * 100]), ARRIVAL, MAX_BYTES, MAX_TEXT)
    assert long.tags == ("t" * 100,)


def test_given_tags_override_the_text_hashtags_which_still_leave_the_tokens() -> None:
    post = decode_post(post_value(text="Crazy commute #nyc", tags=["travel"]),
                       ARRIVAL, MAX_BYTES, MAX_TEXT)
    assert post.tags == ("travel",)
    assert post.tokens == ("crazy", "commute")


def test_hashtag_only_text_and_empty_text_with_tags_are_valid() -> None:
    only_tags = decode_post(post_value(text="#nyc #snow"), ARRIVAL, MAX_BYTES, MAX_TEXT)
    assert only_tags.tokens == () and only_tags.tags == ("nyc", "snow")
    empty = decode_post(post_value(text="", tags=["nyc"]), ARRIVAL, MAX_BYTES, MAX_TEXT)
    assert empty.tokens == () and empty.tags == ("nyc",)


@pytest.mark.parametrize(("ts", "expected"), [
    ("2023-11-14T22:13:20Z", 1700000000.0),
    ("2023-11-14T22:13:20+00:00", 1700000000.0),
    ("2023-11-14T22:13:20", 1700000000.0),  # naive: UTC
    ("2023-11-14T23:13:20+01:00", 1700000000.0),
    ("2023-11-14T22:13:20.5Z", 1700000000.5),
    ("2023-11-14", 1699920000.0),
    (1700000000, 1700000000.0),
    (1700000000.25, 1700000000.25),
    (0, 0.0),
])
def test_timestamps(ts: object, expected: float) -> None:
    post = decode_post(post_value(ts=ts), ARRIVAL, MAX_BYTES, MAX_TEXT)
    assert post.ts == expected and isinstance(post.ts, float)
    event = decode_interaction(interaction_value(ts=ts), ARRIVAL, MAX_BYTES)
    assert event.ts == expected and isinstance(event.ts, float)


@pytest.mark.parametrize("ts", [..., None], ids=["missing", "null"])
def test_missing_ts_takes_the_arrival_time(ts: object) -> None:
    assert decode_post(post_value(ts=ts), ARRIVAL, MAX_BYTES, MAX_TEXT).ts == ARRIVAL
    assert decode_interaction(interaction_value(ts=ts), ARRIVAL, MAX_BYTES).ts == ARRIVAL


def test_contract_example_interaction() -> None:
    value = enc({"event_id": "e1", "user_id": "u2", "post_id": "p1", "kind": "like",
                 "ts": 1700000100})
    event = decode_interaction(value, ARRIVAL, MAX_BYTES)
    assert event == Interaction("e1", "u2", "p1", "like", 1700000100.0)
    assert event.positive


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kinds(kind: str) -> None:
    event = decode_interaction(interaction_value(kind=kind), ARRIVAL, MAX_BYTES)
    assert event.kind == kind
    assert event.positive is (kind in {"like", "click", "share", "comment"})


def test_kind_sets_follow_the_contract() -> None:
    assert POSITIVE_KINDS == {"like", "click", "share", "comment"}
    assert KINDS == POSITIVE_KINDS | {"view", "hide"}


@pytest.mark.parametrize("event_id", [..., None], ids=["missing", "null"])
def test_missing_event_id_is_derived_deterministically(event_id: object) -> None:
    def derived(**fields: object) -> str:
        value = interaction_value(event_id=event_id, **fields)
        return decode_interaction(value, ARRIVAL, MAX_BYTES).event_id

    first = derived()
    assert first.startswith("derived:") and len(first) == len("derived:") + 32
    assert first.isprintable()
    assert derived() == first  # same fields: same id (replays dedupe)
    assert derived(source="app", extra=[1, 2]) == first  # extra fields don't matter
    assert derived(ts="2023-11-14T22:15:00Z") == first  # the same instant, written as ISO
    others = {derived(ts=1700000101), derived(kind="click"), derived(user_id="u3"),
              derived(post_id="p2")}
    assert first not in others and len(others) == 4


def test_derived_id_does_not_depend_on_key_order_or_spacing() -> None:
    a = b'{"user_id": "u2", "post_id": "p1", "kind": "like", "ts": 1700000100}'
    b = b'{"ts":1700000100.0,"kind":"like","post_id":"p1","user_id":"u2"}'
    assert (decode_interaction(a, ARRIVAL, MAX_BYTES).event_id
            == decode_interaction(b, ARRIVAL, MAX_BYTES).event_id)


def test_derived_id_without_ts_uses_the_arrival_time() -> None:
    value = interaction_value(event_id=..., ts=...)
    at_1 = decode_interaction(value, 1000.0, MAX_BYTES)
    assert at_1.event_id == decode_interaction(value, 1000.0, MAX_BYTES).event_id
    assert at_1.event_id != decode_interaction(value, 2000.0, MAX_BYTES).event_id
    assert at_1.event_id == decode_interaction(interaction_value(event_id=..., ts=1000),
                                               ARRIVAL, MAX_BYTES).event_id


def test_given_event_id_is_kept() -> None:
    event = decode_interaction(interaction_value(event_id="derived:abc"), ARRIVAL, MAX_BYTES)
    assert event.event_id == "derived:abc"


# --- dead letters ------------------------------------------------------------------------------

def letter(value: bytes | None, max_bytes: int = MAX_BYTES, reason: str = "invalid_json") -> dict:
    raw = dead_letter(value, reason, "tagspace.posts", 3, 12345, max_bytes)
    assert isinstance(raw, bytes)
    return json.loads(raw.decode("utf-8"))


def test_dead_letter_fields() -> None:
    assert letter(b'{"post_id": 1}', reason="missing_or_invalid_post_id") == {
        "reason": "missing_or_invalid_post_id", "topic": "tagspace.posts", "partition": 3,
        "offset": 12345, "value": '{"post_id": 1}', "value_encoding": "utf-8",
        "value_truncated": False}


def test_dead_letter_of_a_missing_value() -> None:
    got = letter(None, reason="empty_value")
    assert got["value"] == "" and got["value_encoding"] == "utf-8"
    assert got["value_truncated"] is False and got["reason"] == "empty_value"


def test_dead_letter_keeps_unicode_as_text() -> None:
    value = '{"text": "café 東京 🎉 \\u0000"}'.encode()
    raw = dead_letter(value, "nul_in_text", "t", 0, 0, MAX_BYTES)
    assert "café 東京 🎉".encode() in raw  # not \\u-escaped
    assert json.loads(raw)["value"] == value.decode()


def test_dead_letter_of_invalid_utf8_is_hex() -> None:
    value = b'{"text": "\xff\xfe"}'
    got = letter(value, reason="invalid_utf8")
    assert got["value_encoding"] == "hex"
    assert bytes.fromhex(got["value"]) == value
    assert got["value_truncated"] is False


def test_dead_letter_of_raw_control_bytes_is_valid_json() -> None:
    value = bytes(range(0x80))  # every ASCII control character, NUL included: valid UTF-8
    got = letter(value)
    assert got["value_encoding"] == "utf-8" and got["value"].encode() == value


def test_dead_letter_truncates_to_max_bytes() -> None:
    value = b"x" * 1000
    got = letter(value, max_bytes=100, reason="oversize_record")
    assert got["value"] == "x" * 100 and got["value_truncated"] is True
    assert got["value_encoding"] == "utf-8"
    exact = letter(b"x" * 100, max_bytes=100)
    assert exact["value"] == "x" * 100 and exact["value_truncated"] is False


def test_dead_letter_of_huge_invalid_utf8_is_truncated_hex() -> None:
    value = b"\xff" * 10_000
    got = letter(value, max_bytes=64, reason="invalid_utf8")
    assert got["value_encoding"] == "hex" and got["value_truncated"] is True
    assert bytes.fromhex(got["value"]) == value[:64]


def test_dead_letter_cut_through_a_multibyte_character_falls_back_to_hex() -> None:
    value = "é".encode() * 10  # 20 bytes; a cut at 5 splits the third character
    got = letter(value, max_bytes=5)
    assert got["value_encoding"] == "hex" and got["value_truncated"] is True
    assert bytes.fromhex(got["value"]) == value[:5]


def test_dead_letter_of_a_decoded_reason_roundtrip() -> None:
    value = post_value(text="x" * (MAX_TEXT + 1))
    reason = reason_of(decode_post, value, ARRIVAL, MAX_BYTES, MAX_TEXT)
    got = letter(value, reason=reason)
    assert got["reason"] == "oversize_text" and got["value"].encode() == value


# --- properties: decoding never raises anything but InvalidRecord -------------------------------

FAST = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=10,
)
# One level deep: cheaper to draw, and enough to give each field every wrong JSON type.
shallow = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=4),
                                                                      scalars, max_size=3)
FIELDS = ["post_id", "user_id", "event_id", "text", "tags", "ts", "kind"]
record_like = st.dictionaries(st.sampled_from(FIELDS), shallow, max_size=len(FIELDS))


def json_bytes(value: object) -> bytes:
    # allow_nan: NaN / Infinity literals are part of what a producer might send
    return json.dumps(value, allow_nan=True).encode("utf-8", errors="surrogatepass")


def decode_both(value: bytes) -> None:
    for decode in (lambda: decode_post(value, ARRIVAL, MAX_BYTES, MAX_TEXT),
                   lambda: decode_interaction(value, ARRIVAL, MAX_BYTES)):
        try:
            result = decode()
        except InvalidRecord as e:
            assert str(e) and str(e).replace("_", "").isalnum() and str(e).islower()
        else:
            assert isinstance(result, Post | Interaction)
            assert result.ts is not None and math.isfinite(result.ts) and result.ts >= 0


@FAST
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_invalid_record(value: bytes) -> None:
    decode_both(value)


@FAST
@given(json_values)
def test_arbitrary_json_values_decode_or_raise_invalid_record(value: object) -> None:
    decode_both(json_bytes(value))


@FAST
@given(record_like)
def test_record_like_objects_decode_or_raise_invalid_record(record: dict) -> None:
    decode_both(json_bytes(record))


@FAST
@given(
    user_id=st.text(min_size=1, max_size=8), post_id=st.text(min_size=1, max_size=8),
    text=st.text(max_size=40), tags=st.none() | st.lists(st.text(max_size=8), max_size=8),
    ts=shallow,
)
def test_posts_with_valid_looking_ids_decode_or_raise_invalid_record(
        user_id: str, post_id: str, text: str, tags: list[str] | None, ts: object) -> None:
    value = json_bytes({"post_id": post_id, "user_id": user_id, "text": text, "tags": tags,
                        "ts": ts})
    try:
        post = decode_post(value, ARRIVAL, MAX_BYTES, MAX_TEXT)
    except InvalidRecord:
        return
    assert post.post_id == post_id and post.user_id == user_id
    assert post.tokens or post.tags


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          phases=[Phase.generate])
@given(kind=shallow, ts=st.none() | shallow)
def test_interactions_with_any_kind_decode_or_raise_invalid_record(kind: object,
                                                                   ts: object) -> None:
    value = json_bytes({"user_id": "u2", "post_id": "p1", "kind": kind, "ts": ts})
    try:
        event = decode_interaction(value, ARRIVAL, MAX_BYTES)
    except InvalidRecord:
        return
    assert event.kind in KINDS
