"""Produce a dataset to Kafka as a live stream: posts, and interactions with them.

JSONL lines are sent verbatim (invalid ones included: the daemon must dead-letter them); other
formats (fastText, howyoutagtweets) become contract post records. Interactions come from a JSONL
file, or are synthesized from users' interests: a user who posted a hashtag likes later posts
carrying it (with some views and hides mixed in). Posts without a ``ts`` get the send time.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tagspace.dataset import detect_format, read_posts


@dataclass
class ReplayCounts:
    posts: int = 0
    interactions: int = 0


def post_values(path: Path, fmt: str = "auto") -> Iterator[tuple[bytes, dict | None]]:
    """(Kafka value, the decoded record or None when it is not a valid object)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        with open(path, "rb") as f:
            for line in f:
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    record = None
                yield line, record if isinstance(record, dict) else None
        return
    for n, post in enumerate(read_posts(path, fmt, require_tags=False)):
        # fastText files have no authors: posts are spread over 500 synthetic ones
        author = post.user_id or f"author{n % 500}"
        record = {"post_id": post.post_id, "user_id": author, "text": " ".join(post.tokens),
                  "tags": list(post.tags)}
        yield json.dumps(record).encode(), record


class InterestModel:
    """Synthesized interactions: users like posts carrying the hashtags they post."""

    def __init__(self, per_post: float, seed: int = 0):
        self.per_post = per_post
        self.rng = random.Random(seed)
        self.fans: dict[str, list[str]] = defaultdict(list)
        self.n = 0
        self.run = f"{int(time.time() * 1000):x}"  # a second replay makes new events, not dups

    def events(self, record: dict) -> list[dict]:
        raw_tags = record.get("tags")
        tags: list = raw_tags if isinstance(raw_tags, list) else []
        author, post_id = record.get("user_id"), record.get("post_id")
        out = []
        candidates = {u for t in tags if isinstance(t, str) for u in self.fans.get(t, [])}
        candidates.discard(author)
        pool = sorted(candidates)
        count = int(self.per_post) + (self.rng.random() < self.per_post % 1)
        for user in self.rng.sample(pool, min(count, len(pool))):
            self.n += 1
            kind = self.rng.choices(["like", "click", "share", "view", "hide"],
                                    [5, 3, 1, 2, 1])[0]
            out.append({"event_id": f"syn-{self.run}-{self.n}", "user_id": user, "post_id": post_id,
                        "kind": kind, "ts": time.time()})
        for t in tags:
            if isinstance(t, str) and isinstance(author, str):
                fans = self.fans[t]
                if author not in fans:
                    fans.append(author)
                    del fans[:-50]  # the latest 50 fans per tag
        return out


def replay(producer, posts_topic: str, interactions_topic: str, path: Path, *,  # type: ignore[no-untyped-def]
           rate: float | None, limit: int | None = None, fmt: str = "auto",
           interactions: Path | None = None, synthesize: float = 0.0, seed: int = 0,
           progress: bool = True) -> ReplayCounts:
    from tagspace.progress import progress_bar

    counts = ReplayCounts()
    interest = InterestModel(synthesize, seed) if synthesize > 0 else None
    start = time.perf_counter()
    bar = progress_bar(limit, "replay", unit="post", disable=not progress)
    for value, record in post_values(path, fmt):
        if limit is not None and counts.posts >= limit:
            break
        if rate:  # pace: post n leaves at start + n / rate
            delay = start + counts.posts / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        key = record.get("post_id") if record else None
        producer.send(posts_topic, value=value,
                      key=key.encode() if isinstance(key, str) else None)
        counts.posts += 1
        bar.update()
        if interest is not None and record is not None:
            for event in interest.events(record):
                producer.send(interactions_topic, value=json.dumps(event).encode(),
                              key=event["user_id"].encode())
                counts.interactions += 1
    if interactions is not None:
        with open(interactions, "rb") as f:
            for line in f:
                line = line.rstrip(b"\r\n")
                if line:
                    producer.send(interactions_topic, value=line)
                    counts.interactions += 1
    producer.flush()
    bar.close()
    return counts
