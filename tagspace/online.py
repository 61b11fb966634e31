"""Online learning: a model whose vocabularies grow while Hogwild workers keep training it.

``OnlineTagSpace`` owns the live model (lookup tables preallocated at capacity), the online
vocabularies and the per-thread Hogwild workers. ``observe`` admits new words and tags (see
``tagspace.online_vocab``); ``train`` runs one WARP step on a worker; ``evaluate`` scores a post
before it is trained on (prequential evaluation). The model is shared by reference: readers
embed with it while workers update it, lock-free as in Hogwild.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tagspace.batch import MAX_TOKENS
from tagspace.checkpoint import WORD_SPECIALS
from tagspace.dataset import Post
from tagspace.hogwild import TrainConfig
from tagspace.model import ModelConfig, TagSpaceModel
from tagspace.online_steps import (  # noqa: F401 - re-exported: the reasons and the Guard
    EXPLODING_LOSS,
    NONFINITE,
    TAG_NOT_ADMITTED,
    TOO_FEW_TAGS,
    EncodedBatch,
    Guard,
    HogwildSteps,
    OnlineStep,
)
from tagspace.online_vocab import Admission, OnlineVocabulary
from tagspace.tagger import Tagger
from tagspace.vocab import Vocabulary


@dataclass(frozen=True)
class Capacity:
    words: int = 200_000
    tags: int = 100_000  # the paper's 100k tags
    min_word_count: int = 2
    min_tag_count: int = 2
    # a new tag gets a probationary row at its first post (tagspace.online_vocab)
    first_sight_tags: bool = False


@dataclass(frozen=True)
class Prediction:
    hit_at_1: bool
    gold: int  # gold tags of the post
    found_at_10: int  # of them in the top 10


class OnlineTagSpace:
    def __init__(self, tagger: Tagger, capacity: Capacity, train: TrainConfig,
                 guard: Guard | None = None):
        words, tags = tagger.words, tagger.tags
        if not isinstance(words, OnlineVocabulary):
            words = OnlineVocabulary(words, max(capacity.words, len(words)),
                                     capacity.min_word_count)
        if not isinstance(tags, OnlineVocabulary):
            tags = OnlineVocabulary(tags, max(capacity.tags, len(tags)), capacity.min_tag_count,
                                    capacity.first_sight_tags)
        model = _grow(tagger.model, len(words), len(tags))
        model.link_words_to_tags(words.tokens, {t: i for i, t in enumerate(tags.tokens)
                                                if tags.active[i]})
        self.tagger = Tagger(model, words, tags)
        self.words, self.tags = words, tags
        self.train_config = train
        self._vocab_lock = threading.Lock()  # vocabularies change under it; the weights do not
        self.steps = HogwildSteps(model, train, self.tagger.pad_id, self.tagger.unk_id,
                                  (words.row_generation, tags.row_generation), guard)
        self.steps.set_pool(np.flatnonzero(tags.active))  # WARP negatives: tags in use

    @classmethod
    def fresh(cls, config: ModelConfig, capacity: Capacity, train: TrainConfig,
              seed: int = 0, guard: Guard | None = None) -> OnlineTagSpace:
        """An untrained model with empty vocabularies: everything is learnt from the stream."""
        torch.manual_seed(seed)
        words = OnlineVocabulary(Vocabulary([], [], WORD_SPECIALS), capacity.words,
                                 capacity.min_word_count)
        tags = OnlineVocabulary(Vocabulary([], []), capacity.tags, capacity.min_tag_count,
                                capacity.first_sight_tags)
        model = TagSpaceModel(_sized(config, capacity.words, capacity.tags))
        return cls(Tagger(model, words, tags), capacity, train, guard)

    @property
    def model(self) -> TagSpaceModel:
        return self.tagger.model

    def observe(self, post: Post, clock: float) -> list[Admission]:
        """Count the post's words and tags; admitted tokens get fresh rows. A new tag's row
        starts at this post's embedding (scaled), so it already ranks high for similar posts
        (a warm start instead of a random vector that WARP would first have to move): scaled
        to the tags' mean norm, or for a tag on probation (its first post: ``first_sight``)
        just above the best score a regular tag has for this post (at most the largest regular
        norm), since no training step may come before the next similar post asks."""
        with self._vocab_lock:
            new_words = self.words.observe(post.tokens[:MAX_TOKENS], clock)
            new_tags = self.tags.observe(post.tags, clock)
            if not new_words and not new_tags:
                return []
            model = self.model
            with torch.no_grad():
                scale = model.config.init_scale / model.config.dim**0.5
                for a in new_words:
                    model.word_emb.data[a.row] = torch.randn(model.config.dim) * scale
                if new_tags:
                    emb = self.tagger.embed_tokens([post.tokens])[0]
                    unit = emb / emb.norm().clamp_min(1e-8)
                    norm = self._mean_tag_norm() if self.tags.size > len(new_tags) else 1.0
                    first = [a for a in new_tags if self.tags.counts[a.row] < self.tags.min_count]
                    first_norm = norm
                    if first:  # on probation: as good as the best regular tag for its post
                        best, top_norm = self._best_regular_tag(emb)
                        wanted = 1.01 * best / float(emb.norm().clamp_min(1e-8))
                        first_norm = max(norm, min(wanted, top_norm))
                    for a in new_tags:
                        model.tag_emb.data[a.row] = unit * (first_norm if a in first else norm)
                self._relink(new_words, new_tags)
            # stamped again now that the rows hold their new weights: a step that began
            # before this point never applies an update to them
            self.words.renew(a.row for a in new_words)
            self.tags.renew(a.row for a in new_tags)
            self.steps.reset_rows([a.row for a in new_words], [a.row for a in new_tags])
            if new_tags:
                self.steps.set_pool(np.flatnonzero(self.tags.active))
            return new_words + new_tags

    def _best_regular_tag(self, emb: torch.Tensor) -> tuple[float, float]:
        """The best score of a regular tag (not on probation) for a post embedding, and the
        largest norm among those tags (the cap of a first-sight row: probationary rows never
        set each other's scale, so a stream of new tags cannot inflate the norms). One product
        with the regular tags, paid only for a post that brings a first-sight tag."""
        rows = self.tags.regular_rows()
        if not len(rows):
            return 0.0, 1.0
        table = self.model.tag_emb.data[torch.from_numpy(rows)]
        return max(0.0, float((table @ emb).max())), float(table.norm(dim=1).max())

    def _mean_tag_norm(self, sample: int = 1024) -> float:
        """The mean norm of the tag vectors in use, over at most ``sample`` of them: admitting a
        tag must not read the whole table (100k rows) on the ingestion path."""
        rows = np.flatnonzero(self.tags.active)
        if len(rows) > sample:
            rows = rows[np.linspace(0, len(rows) - 1, sample).astype(np.int64)]
        return float(self.model.tag_emb.data[torch.from_numpy(rows)].norm(dim=1).mean())

    def _relink(self, new_words: Sequence[Admission], new_tags: Sequence[Admission]) -> None:
        link = self.model.word_to_tag
        for a in new_tags:
            if a.evicted is not None:
                link[link == a.row] = -1
            row = self.words.get(a.token)
            if row is not None:
                link[row] = a.row
        for a in new_words:
            tag = self.tags.get(a.token)
            link[a.row] = -1 if tag is None else tag

    def evaluate(self, posts: Sequence[Post]) -> list[Prediction]:
        """Score posts with the current model before training on them (their gold tags not
        yet seen count as misses, as in the offline metrics)."""
        posts = [p for p in posts if p.tags]
        if not posts:
            return []
        scores = self.tagger.scores(posts)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        out = []
        for post, best in zip(posts, top, strict=True):
            gold = {self.tags.get(t) for t in post.tags} - {None}
            out.append(Prediction(int(best[0]) in gold, len(post.tags),
                                  len(gold.intersection(best.tolist()))))
        return out

    def embed_and_evaluate(self, posts: Sequence[Post], evaluate: int,
                           bf16: bool = False) -> tuple[np.ndarray, list[Prediction]]:
        """Every post's embedding and, from the same forward pass, the prequential scores of
        the first ``evaluate`` tagged posts (over the tags in use, top 10 by selection): each
        post is encoded once. ``bf16``: the posts not scored are embedded under bf16 autocast
        (the scored ones stay fp32, as the served scores are)."""
        tagged = [i for i, p in enumerate(posts) if p.tags][:max(0, evaluate)]
        rest = sorted(set(range(len(posts))) - set(tagged))
        embs = np.zeros((len(posts), self.model.config.dim), np.float32)
        out: list[Prediction] = []
        if tagged:
            scored = self.tagger.score_active([posts[i].tokens for i in tagged])
            embs[tagged] = scored.embeddings
            rows, scores = scored.tags.rows, scored.scores
            k = min(10, scores.shape[1])
            for i, row in zip(tagged, scores, strict=True):
                best = np.argpartition(-row, k - 1)[:k] if k else np.zeros(0, np.int64)
                best = rows[best[np.argsort(-row[best], kind="stable")]]
                gold = {self.tags.get(t) for t in posts[i].tags} - {None}
                out.append(Prediction(bool(len(best)) and int(best[0]) in gold,
                                      len(posts[i].tags), len(gold.intersection(best.tolist()))))
        if rest:
            embs[rest] = self.tagger.embed_all([posts[i].tokens for i in rest], bf16=bf16)
        return embs, out

    @property
    def guard(self) -> Guard:
        return self.steps.guard

    @property
    def loss_mean(self) -> float:
        return self.steps.loss_mean

    @property
    def loss_steps(self) -> int:
        return self.steps.loss_steps

    def train(self, posts: Sequence[Post]) -> OnlineStep:
        """One WARP step on the calling thread's worker (Hogwild: threads never wait for each
        other's updates). Posts not trained on are counted in ``skipped`` by reason; a step
        that fails the ``Guard`` is not applied (``dropped``)."""
        return self.steps.step(self.encode(posts))

    def encode(self, posts: Sequence[Post]) -> EncodedBatch:
        """Posts as rows for a step; those without a tag in use are left out (counted)."""
        since = (self.words.generation, self.tags.generation)  # before encoding: see apply
        words, gold = [], []
        skipped: Counter[str] = Counter()
        for post in posts:
            tags = np.asarray(self.tags.encode(post.tags), np.int64)
            if len(tags):
                words.append(np.asarray(
                    self.words.encode(post.tokens[:MAX_TOKENS], self.tagger.unk_id), np.int64))
                gold.append(tags)
            else:
                skipped[TAG_NOT_ADMITTED] += 1
        return EncodedBatch(words, gold, since, dict(skipped), time.time())

    def replicas(self) -> tuple[OnlineVocabulary, OnlineVocabulary]:
        """Copies of the vocabularies for a process that serves with this model's weights
        (shared memory); ``take_admissions`` then gives what they must apply to stay in step."""
        with self._vocab_lock:
            return self.words.replica(), self.tags.replica()

    def take_admissions(self) -> tuple[list[Admission], list[Admission]]:
        """(words, tags) admitted since the replicas were made or this was last called."""
        with self._vocab_lock:
            return self.words.take_journal(), self.tags.take_journal()

    def snapshot(self) -> Tagger:
        """A consistent copy for checkpointing: vocabularies and weights taken together."""
        return self.snapshot_state()[0]

    def snapshot_state(self) -> tuple[Tagger, dict[str, np.ndarray]]:
        """``snapshot`` and, taken with it, the per-row state a checkpoint keeps beside the
        weights (``Checkpoint.arrays``): when each word and tag was last seen, so that eviction
        resumes in the same order after a restart."""
        with self._vocab_lock:
            with torch.device("meta"):  # no initialisation to throw away (0.14 s at 300k rows)
                model = TagSpaceModel(self.model.config)
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            model.load_state_dict(state, assign=True)
            n = len(WORD_SPECIALS)
            words = Vocabulary(self.words.tokens[n:], self.words.counts[n:], WORD_SPECIALS)
            tags = Vocabulary(list(self.tags.tokens), list(self.tags.counts))
            arrays = {"words.last_seen": self.words.last_seen.copy(),
                      "tags.last_seen": self.tags.last_seen.copy()}
        return Tagger(model, words, tags), arrays


def restore_online(tagger: Tagger, capacity: Capacity, train: TrainConfig,
                   arrays: Mapping[str, np.ndarray] | None = None,
                   clock: float = 0.0, guard: Guard | None = None) -> OnlineTagSpace:
    """From a checkpoint written by ``snapshot`` (free rows as placeholders) or by
    ``tagspace train`` (exact vocabularies, grown here to capacity).

    ``arrays`` (``Checkpoint.arrays``) gives the rows' last-seen clocks; without them every
    token counts as last seen at ``clock`` (by default before any post of the stream)."""
    arrays = arrays or {}
    words = OnlineVocabulary.restore(tagger.words, capacity.words, capacity.min_word_count,
                                     _clocks(arrays, "words", len(tagger.words)), clock)
    tags = OnlineVocabulary.restore(tagger.tags, capacity.tags, capacity.min_tag_count,
                                    _clocks(arrays, "tags", len(tagger.tags)), clock,
                                    capacity.first_sight_tags)
    model = _grow(tagger.model, len(words), len(tags))
    return OnlineTagSpace(Tagger(model, words, tags), capacity, train, guard)


def nonfinite_parameters(model: TagSpaceModel) -> list[str]:
    """Names of the parameters holding a NaN or an infinity: a diverged model, never to be
    checkpointed or served."""
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


def _clocks(arrays: Mapping[str, np.ndarray], kind: str, rows: int) -> np.ndarray | None:
    clocks = arrays.get(f"{kind}.last_seen")
    return clocks if clocks is not None and len(clocks) == rows else None


def _sized(config: ModelConfig, n_words: int, n_tags: int) -> ModelConfig:
    values = config.to_dict() | {"n_words": n_words, "n_tags": n_tags}
    return ModelConfig(**values)  # type: ignore[arg-type]


def _grow(model: TagSpaceModel, n_words: int, n_tags: int) -> TagSpaceModel:
    """The same model with lookup tables of (at least) the given sizes (new rows random) and
    dropout off: online posts are seen once, and the Hogwild workers train their encoders in
    training mode (a ``tagspace train`` model usually has dropout 0.5)."""
    config = model.config
    if config.n_words >= n_words and config.n_tags >= n_tags and config.dropout == 0.0:
        return model
    grown = TagSpaceModel(ModelConfig(**(config.to_dict() | {  # type: ignore[arg-type]
        "n_words": max(n_words, config.n_words), "n_tags": max(n_tags, config.n_tags),
        "dropout": 0.0})))
    state = model.state_dict()
    with torch.no_grad():
        grown.word_emb[: config.n_words] = state.pop("word_emb")
        grown.tag_emb[: config.n_tags] = state.pop("tag_emb")
        grown.word_to_tag[: config.n_words] = state.pop("word_to_tag")
        grown.load_state_dict(state, strict=False)
    return grown
