"""Dataset files: post records from jsonl, fastText-labelled or howyoutagtweets (hyt) files.

Readers never crash on bad lines: each one is skipped and counted by reason in ``ReadStats``.
An unrecognisable file is a clear ``ValueError`` naming the file and the formats accepted.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from tagspace.text import extract_hashtags, normalize_tag, tokenize

FORMATS = ("auto", "jsonl", "fasttext", "hyt")
MAX_LINE_BYTES = 64 * 1024  # a post is short; a longer line is junk, not a post
MAX_TAGS = 64
MAX_TAG_CHARS = 100  # after normalisation; a longer "tag" is a sentence or junk
_FASTTEXT_LABEL = "__label__"


@dataclass(frozen=True, slots=True)
class Post:
    post_id: str
    user_id: str | None
    ts: float | None
    tokens: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass
class ReadStats:
    """How many lines were read and why the skipped ones were skipped."""

    lines: int = 0
    posts: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def summary(self) -> str:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items()))
        return f"{self.posts} posts from {self.lines} lines" + (
            f" (skipped {sum(self.skipped.values())}: {reasons})" if reasons else ""
        )


def detect_format(path: Path) -> str:
    """Guess a file's format from its first non-empty lines."""
    with path.open("rb") as f:
        for raw in f:
            line = raw[:MAX_LINE_BYTES].decode("utf-8", errors="replace").strip()
            if not line:
                continue
            if line.startswith("{"):
                return "jsonl"
            if line.startswith(_FASTTEXT_LABEL):
                return "fasttext"
            if line.count("\t") >= 2:
                return "hyt"
            break
    raise ValueError(
        f"{path}: cannot detect the format (expected jsonl post records, fastText "
        "'__label__tag text' lines, or hyt 'text<TAB>user<TAB>tag...' lines); pass --format"
    )


def read_posts(
    path: str | Path,
    fmt: str = "auto",
    stats: ReadStats | None = None,
    *,
    require_tags: bool = False,
    require_tokens: bool = False,
) -> Iterator[Post]:
    """Yield the valid posts of ``path``; skipped lines are counted in ``stats``."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    fmt = detect_format(path) if fmt == "auto" else fmt
    parse = {"jsonl": _parse_jsonl, "fasttext": _parse_fasttext, "hyt": _parse_hyt}[fmt]
    stats = stats if stats is not None else ReadStats()
    prefix = file_id_prefix(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(_bounded_lines(f)):
            stats.lines += 1
            if raw is None:
                stats.skip("line_too_long")
                continue
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                stats.skip("invalid_utf8")
                continue
            if not line.strip():
                stats.skip("empty_line")
                continue
            try:
                post = parse(line, f"{prefix}:{lineno}", float(lineno))
            except _BadRecord as e:
                stats.skip(str(e))
                continue
            if require_tags and not post.tags:
                stats.skip("no_tags")
                continue
            if require_tokens and not post.tokens:
                stats.skip("no_text")
                continue
            stats.posts += 1
            yield post


def file_id_prefix(path: Path) -> str:
    """The id prefix of a file's posts that carry no id of their own (fastText, hyt).

    The stem alone made ``cooking.train`` and ``cooking.valid`` share ids, so evaluated posts
    looked like profile posts. The full name keeps ids readable; a hash of the resolved path
    tells apart equal names in other folders and is the same on every read of one file.
    """
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{path.name[:200]}@{digest}"  # ids stay under the contract's 256 characters


def _bounded_lines(f: BinaryIO) -> Iterator[bytes | None]:
    """Lines of a binary file; None for a line over MAX_LINE_BYTES, never held in memory."""
    while True:
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES:
            while line and not line.endswith(b"\n"):  # skip the rest of the line
                line = f.readline(1 << 20)
            yield None
        else:
            yield line


class _BadRecord(ValueError):
    """A line that is not a valid record; the message is the counted reason."""


def _clean_tags(tags: Sequence[str], error: type[ValueError] = _BadRecord) -> tuple[str, ...]:
    """Normalised distinct tags, checked as ids are (a record's ``tags`` list and the
    hashtags of its text alike): at most ``MAX_TAGS``, each at most ``MAX_TAG_CHARS``, no
    control characters or whitespace inside; empty ones (a lone ``#``) are left out."""
    if len(tags) > MAX_TAGS:
        raise error("too_many_tags")
    seen: dict[str, None] = {}
    for tag in tags:
        normal = normalize_tag(tag)
        if not normal:
            continue
        if not normal.isprintable() or any(c.isspace() for c in normal):  # NUL, CR/LF...
            raise error("invalid_tag_characters")
        if len(normal) > MAX_TAG_CHARS:
            raise error("oversize_tag")
        seen.setdefault(normal, None)
    return tuple(seen)


def _parse_fasttext(line: str, default_id: str, default_ts: float) -> Post:
    words = line.split()
    labels = [w[len(_FASTTEXT_LABEL) :] for w in words if w.startswith(_FASTTEXT_LABEL)]
    text = " ".join(w for w in words if not w.startswith(_FASTTEXT_LABEL))
    return Post(default_id, None, default_ts, tokenize(text), _clean_tags(labels))


def _parse_hyt(line: str, default_id: str, default_ts: float) -> Post:
    fields = line.split("\t")
    if len(fields) < 3:
        raise _BadRecord("hyt_too_few_fields")
    text, user, tags = fields[0], fields[1].strip(), fields[2:]
    if not user:
        raise _BadRecord("missing_user_id")
    return Post(default_id, user, default_ts, tokenize(text), _clean_tags(tags))


def _parse_jsonl(line: str, default_id: str, default_ts: float) -> Post:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError, or an int too long to convert
        raise _BadRecord("invalid_json") from None
    return post_from_record(record, default_ts, _BadRecord)


def post_from_record(record: object, default_ts: float | None, error: type[ValueError]) -> Post:
    """Validate a decoded post record (``../shared/CONTRACT.md``); raise ``error(reason)``."""
    if not isinstance(record, dict):
        raise error("not_an_object")
    for key in ("post_id", "user_id", "text"):
        value = record.get(key)
        if not isinstance(value, str):
            raise error(f"missing_or_invalid_{key}")
        if key != "text" and (not value or len(value) > 256):
            raise error(f"missing_or_invalid_{key}")
    text = record["text"]
    tags = record.get("tags")
    if tags is None:  # the text's hashtags, held to the same rules as a list
        labels = _clean_tags(extract_hashtags(text), error)
    elif isinstance(tags, list) and all(isinstance(t, str) for t in tags):
        labels = _clean_tags(tags, error)
    else:
        raise error("invalid_tags")
    return Post(
        record["post_id"], record["user_id"], parse_ts(record.get("ts"), default_ts, error),
        tokenize(text), labels,
    )


def parse_ts(value: object, default: float | None, error: type[ValueError]) -> float | None:
    """A record's ``ts``: unix seconds or ISO-8601 (naive = UTC); ``error("invalid_ts")``."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise error("invalid_ts")
    try:
        if isinstance(value, int | float):
            ts = float(value)
        elif isinstance(value, str):
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:  # naive ISO time: UTC, never this machine's zone
                moment = moment.replace(tzinfo=UTC)
            ts = moment.timestamp()
        else:
            raise error("invalid_ts")
    except (ValueError, OverflowError):
        raise error("invalid_ts") from None
    if not math.isfinite(ts) or ts < 0:
        raise error("invalid_ts")
    return ts
