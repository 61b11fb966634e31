"""From posts to a trained Tagger: vocabularies, WSABIE initialisation, Hogwild WARP training."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import torch

from tagspace.batch import EncodedPosts, special_ids
from tagspace.checkpoint import WORD_SPECIALS
from tagspace.dataset import Post
from tagspace.hogwild import EpochStats, HogwildTrainer, TrainConfig
from tagspace.model import ModelConfig, TagSpaceModel
from tagspace.progress import is_terminal
from tagspace.stream import DEFAULT_BUFFER, PostFiles, StreamedPosts
from tagspace.tagger import Tagger
from tagspace.vocab import TokenCounter, Vocabulary

log = logging.getLogger(__name__)
MODELS = {"tagspace": "conv", "wsabie": "bag"}


@dataclass(frozen=True)
class VocabConfig:
    min_word_count: int = 1
    max_words: int = 1_000_000  # the paper's 1M words
    min_tag_count: int = 1
    max_tags: int = 100_000  # the paper's 100k tags
    # Distinct words (and tags) counted at once; the rarest are pruned past it (TokenCounter).
    # 10M: a few GB of counts at most, far above any vocabulary kept.
    max_distinct_words: int | None = 10_000_000


def build_vocabularies(posts: Iterable[Post], config: VocabConfig) -> tuple[Vocabulary, Vocabulary]:
    """Both vocabularies in one pass over ``posts`` (which may be files read as they go)."""
    word_counts = TokenCounter(config.max_distinct_words)
    tag_counts = TokenCounter(config.max_distinct_words)
    for post in posts:
        word_counts.update(post.tokens)
        tag_counts.update(post.tags)
    for kind, counts in (("word", word_counts), ("tag", tag_counts)):
        if counts.pruned:
            log.info("%s counts pruned %d times to stay under %d distinct (approximate below "
                     "%d occurrences)", kind, counts.pruned, counts.max_distinct, counts.floor)
    words = Vocabulary.from_counts(word_counts, min_count=config.min_word_count,
                                   max_size=config.max_words, specials=WORD_SPECIALS)
    tags = Vocabulary.from_counts(tag_counts, min_count=config.min_tag_count,
                                  max_size=config.max_tags)
    if len(tags) == 0:
        raise ValueError("the training data has no hashtags: nothing to learn")
    return words, tags


def train_tagger(
    posts: Sequence[Post] | PostFiles,
    model_name: str,
    model_config: ModelConfig,
    train_config: TrainConfig,
    vocab_config: VocabConfig = VocabConfig(),
    init_from: Tagger | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    vocabularies: tuple[Vocabulary, Vocabulary] | None = None,
    shuffle_buffer: int = DEFAULT_BUFFER,
) -> Tagger:
    """Train ``model_name`` ("tagspace" or "wsabie") on ``posts`` that carry tags: a list in
    memory, or ``PostFiles`` streamed from disk every epoch (``tagspace.stream``) and
    shuffled in a buffer of ``shuffle_buffer`` posts.

    ``init_from``: a trained model over the same vocabularies whose lookup tables seed this one
    (the paper initialises #TagSpace from WSABIE "to expedite convergence").
    """
    if model_name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model_name!r}")
    words, tags = vocabularies or build_vocabularies(posts, vocab_config)
    config = replace(model_config, encoder=MODELS[model_name], n_words=len(words), n_tags=len(tags))
    torch.manual_seed(train_config.seed)
    model = TagSpaceModel(config)
    model.link_words_to_tags(words.tokens, {t: i for i, t in enumerate(tags.tokens)})
    if init_from is not None:
        _copy_lookup_tables(init_from, model, words, tags)
    data: EncodedPosts | StreamedPosts
    if isinstance(posts, PostFiles):
        data = StreamedPosts(posts, words, tags, shuffle_buffer, size_hint=posts.size_hint)
    else:
        data = EncodedPosts.encode(posts, words, tags)
    pad_id, unk_id = special_ids(words)
    model.to(train_config.device)
    trainer = HogwildTrainer(model, train_config, pad_id, unk_id)
    if progress:
        on_epoch = _logging_epochs(model_name, train_config.epochs, on_epoch)
    # Hogwild's own bar is a tqdm bar: only on a terminal, else the epoch lines are the progress.
    trainer.fit(data, on_epoch=on_epoch, progress=progress and is_terminal(), desc=model_name)
    return Tagger(model.cpu(), words, tags)  # checkpoints and serving read host memory


def _logging_epochs(
    name: str, epochs: int, then: Callable[[EpochStats], None] | None
) -> Callable[[EpochStats], None]:
    """``then``, after one log line per epoch: what a log file keeps of training progress."""

    def on_epoch(s: EpochStats) -> None:
        log.info("%s epoch %d/%d: loss %.4f, %.0f posts/s, %.1f s", name, s.epoch, epochs,
                 s.loss, s.examples / max(s.seconds, 1e-9), s.seconds)
        if then is not None:
            then(s)

    return on_epoch


def _copy_lookup_tables(
    source: Tagger, target: TagSpaceModel, words: Vocabulary, tags: Vocabulary
) -> None:
    if source.model.config.dim != target.config.dim:
        raise ValueError("init model has a different dimension")
    if source.words.tokens != words.tokens or source.tags.tokens != tags.tokens:
        raise ValueError("init model was trained with other vocabularies")
    with torch.no_grad():
        target.word_emb.copy_(source.model.word_emb)
        target.tag_emb.copy_(source.model.tag_emb)
