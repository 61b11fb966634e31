"""The paper's Tables 3/4: every baseline and #TagSpace at several dimensions on one split.

Writes ``results.json``, ``table.md`` and ``plot.png`` into the output directory, and adds a
Wilcoxon signed-rank test of #TagSpace against WSABIE on per-post rank at each dimension, as the
paper reports. When the posts carry authors, it also reports the author prior alone and the
personalized #TagSpace (weights tuned on ``valid``; without it that row is left out).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from tagspace.baselines import FrequencyScorer, Word2VecScorer, WordsScorer
from tagspace.dataset import Post
from tagspace.evaluate import Evaluation, TagScorer, evaluate
from tagspace.hogwild import TrainConfig
from tagspace.model import ModelConfig
from tagspace.personalize import (
    AuthorProfiles,
    PersonalizedScorer,
    PersonalizeWeights,
    tune_weights,
)
from tagspace.training import VocabConfig, build_vocabularies, train_tagger

log = logging.getLogger(__name__)
AUTHOR_ONLY = PersonalizeWeights(count=1000.0)  # history first; frequency breaks ties


@dataclass
class CompareConfig:
    dims: tuple[int, ...] = (64, 128, 256)
    tagspace: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=0.01))
    wsabie: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=0.05))
    model: ModelConfig = field(default_factory=ModelConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    word2vec_epochs: int = 60
    init_from_wsabie: bool = True


@dataclass
class Row:
    method: str
    dim: int | None
    metrics: dict[str, float | int]
    train_seconds: float
    note: str = ""


def run_compare(
    train: Sequence[Post],
    test: Sequence[Post],
    config: CompareConfig,
    valid: Sequence[Post] | None = None,
    progress: bool = True,
    on_row: Callable[[Row], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every method; return the JSON-ready report."""
    words, tags = build_vocabularies(train, config.vocab)
    rows: list[Row] = []
    tests: list[dict[str, Any]] = []

    def add(method: str, dim: int | None, scorer: TagScorer, seconds: float, note: str = "",
            posts: Sequence[Post] = test) -> Evaluation:
        ev = evaluate(scorer, posts, progress=progress, desc=f"evaluate {method} {dim or ''}")
        row = Row(method, dim, ev.metrics.to_dict(), round(seconds, 1), note)
        rows.append(row)
        if on_row:
            on_row(row)
        return ev

    add("Frequency", None, FrequencyScorer(tags), 0.0)
    add("#words", None, WordsScorer(tags), 0.0)
    personal = _has_authors(train) and _has_authors(test)
    profiles = AuthorProfiles.from_posts(train) if personal else None
    if profiles is not None:
        prior = PersonalizedScorer(FrequencyScorer(tags), profiles, AUTHOR_ONLY)
        add("author prior", None, prior, 0.0, "the author's past tags by count, no text")
    for dim in config.dims:
        start = time.perf_counter()
        w2v = Word2VecScorer(train, tags, dim, epochs=config.word2vec_epochs,
                             seed=config.tagspace.seed)
        add("Word2Vec", dim, w2v, time.perf_counter() - start)

        start = time.perf_counter()
        model = replace(config.model, dim=dim)
        wsabie = train_tagger(train, "wsabie", replace(model, word_tag_share=False),
                              config.wsabie, progress=progress, vocabularies=(words, tags))
        wsabie_seconds = time.perf_counter() - start
        ev_wsabie = add("WSABIE", dim, wsabie, wsabie_seconds)

        start = time.perf_counter()
        tagspace = train_tagger(
            train, "tagspace", model, config.tagspace, progress=progress,
            vocabularies=(words, tags), init_from=wsabie if config.init_from_wsabie else None,
        )
        seconds = time.perf_counter() - start
        note = "lookup tables from WSABIE" if config.init_from_wsabie else ""
        ev_tagspace = add("#TagSpace", dim, tagspace, seconds, note)
        tests.append(_wilcoxon(dim, ev_tagspace, ev_wsabie))

        if profiles is not None and valid is not None:  # never tuned on the test posts
            weights, _ = tune_weights(tagspace, profiles, valid)
            add("#TagSpace + author", dim, PersonalizedScorer(tagspace, profiles, weights),
                seconds, "author weights (count, model sim., TF-IDF sim., popularity) "
                f"{tuple(weights.to_dict().values())} tuned on validation data")
    return {
        "n_train_posts": len(train),
        "n_test_posts": sum(1 for p in test if p.tags),
        "n_words": len(words),
        "n_tags": len(tags),
        "rows": [row.__dict__ for row in rows],
        "wilcoxon": tests,
    }


def _has_authors(posts: Sequence[Post]) -> bool:
    return any(p.user_id is not None for p in posts)


def _wilcoxon(dim: int, tagspace: Evaluation, wsabie: Evaluation) -> dict[str, Any]:
    """Paired test on each post's best gold rank: does #TagSpace rank gold tags higher?"""
    diff = tagspace.best_rank - wsabie.best_rank
    if not np.any(diff):
        return {"dim": dim, "statistic": None, "p_value": 1.0, "better": "tie", "n": len(diff)}
    result = wilcoxon(tagspace.best_rank, wsabie.best_rank, zero_method="wilcox")
    better = "#TagSpace" if np.median(diff[diff != 0]) < 0 else "WSABIE"
    return {"dim": dim, "statistic": float(result.statistic), "p_value": float(result.pvalue),
            "better": better, "n": int(np.count_nonzero(diff))}


def markdown_table(report: dict[str, Any]) -> str:
    lines = [
        "| Method | dim | P@1 | R@10 | Mean Rank | P@1 (known) | R@10 (known) | train s | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        m = row["metrics"]
        lines.append(
            f"| {row['method']} | {row['dim'] or ''} | {m['p_at_1']:.3f} | {m['r_at_10']:.3f} | "
            f"{m['mean_rank']:.0f} | {m['p_at_1_known']:.3f} | {m['r_at_10_known']:.3f} | "
            f"{row['train_seconds']:.0f} | {row['note']} |"
        )
    lines.append("")
    lines.append("Wilcoxon signed-rank test, #TagSpace vs WSABIE on each post's best gold rank:")
    lines.append("")
    for t in report["wilcoxon"]:
        lines.append(f"- dim {t['dim']}: {t['better']} ranks better, p = {t['p_value']:.2g} "
                     f"({t['n']} posts with different ranks)")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> None:
    from tagspace.plot import plot_compare

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "table.md").write_text(markdown_table(report))
    plot_compare(report, out / "plot.png")
