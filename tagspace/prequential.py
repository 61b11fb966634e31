"""Prequential ("test, then train") evaluation of the online learner, as the daemon runs it.

Posts are replayed in time order through ``OnlineTagSpace`` a batch at a time: each batch is
first scored with the model as it stands (P@1 and R@10 of its tagged posts, a gold tag the model
cannot name yet counting as a miss, as in the offline metrics), then observed (new words and
tags admitted) and trained on. This is River's ``progressive_val_score`` for a ranking model:
every post is a test post before it is a training post, so the curve measures what a stream's
users would have seen. Single-threaded and seeded: a run is reproducible, unlike Hogwild.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from tagspace.dataset import Post
from tagspace.online import OnlineTagSpace


@dataclass(frozen=True)
class CurvePoint:
    posts: int  # tagged posts seen so far
    p_at_1: float  # over the last window
    r_at_10: float
    cum_p_at_1: float  # since the start
    cum_r_at_10: float
    tags_in_use: int


@dataclass
class PrequentialReport:
    posts: int = 0  # tagged posts scored
    hits_at_1: int = 0
    gold: int = 0
    found_at_10: int = 0
    curve: list[CurvePoint] = field(default_factory=list)
    skipped_untagged: int = 0

    @property
    def p_at_1(self) -> float:
        return self.hits_at_1 / self.posts if self.posts else float("nan")

    @property
    def r_at_10(self) -> float:
        return self.found_at_10 / self.gold if self.gold else float("nan")

    def tail(self, fraction: float = 0.5) -> tuple[float, float]:
        """Mean windowed P@1 and R@10 over the last ``fraction`` of the curve: the settled
        quality, which the start-up phase does not dominate."""
        points = self.curve[int(len(self.curve) * (1 - fraction)):] or self.curve
        if not points:
            return float("nan"), float("nan")
        return (sum(p.p_at_1 for p in points) / len(points),
                sum(p.r_at_10 for p in points) / len(points))

    def to_dict(self) -> dict[str, object]:
        tail_p1, tail_r10 = self.tail()
        return {"posts": self.posts, "p_at_1": self.p_at_1, "r_at_10": self.r_at_10,
                "tail_p_at_1": tail_p1, "tail_r_at_10": tail_r10,
                "skipped_untagged": self.skipped_untagged,
                "curve": [asdict(p) for p in self.curve]}


def prequential(
    online: OnlineTagSpace,
    posts: Sequence[Post],
    batch_size: int = 16,
    window: int = 1000,
    on_batch: Callable[[int], None] | None = None,
) -> PrequentialReport:
    """Test-then-train over ``posts`` (give them in time order); a curve point per ``window``
    tagged posts. ``on_batch(n)``: called with each batch's size (progress bars)."""
    if batch_size < 1 or window < 1:
        raise ValueError("batch_size and window must be >= 1")
    report = PrequentialReport()
    w_posts = w_hits = w_gold = w_found = 0
    for start in range(0, len(posts), batch_size):
        batch = posts[start : start + batch_size]
        for pred in online.evaluate(batch):  # before the model has seen these posts
            report.posts += 1
            report.hits_at_1 += pred.hit_at_1
            report.gold += pred.gold
            report.found_at_10 += pred.found_at_10
            w_posts, w_hits = w_posts + 1, w_hits + pred.hit_at_1
            w_gold, w_found = w_gold + pred.gold, w_found + pred.found_at_10
            if w_posts == window:
                report.curve.append(CurvePoint(report.posts, w_hits / w_posts, w_found / w_gold,
                                               report.p_at_1, report.r_at_10,
                                               online.tags.size))
                w_posts = w_hits = w_gold = w_found = 0
        report.skipped_untagged += sum(1 for p in batch if not p.tags)
        for post in batch:
            online.observe(post, clock=post.ts if post.ts is not None else float(start))
        online.train([p for p in batch if p.tags])
        if on_batch is not None:
            on_batch(len(batch))
    return report
