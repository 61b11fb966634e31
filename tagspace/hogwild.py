"""Hogwild parallel SGD (Niu et al. 2011) with WARP, as the paper trains #TagSpace.

N worker threads update one shared model without locks. Each worker has its own RNG
(seed + rank), its own AdaGrad state and its own ``nn.Module`` copy of the encoder whose
parameters alias the shared memory: updates land in place for everyone, while each worker's
autograd version counters stay its own (threads sharing one tensor object would trip autograd's
in-place checks). Lookup tables are updated sparsely: a step gathers only the rows its batch
touches and scatters the AdaGrad step back with ``index_add_``.

PyTorch releases the GIL inside its kernels, so threads run in parallel on the GEMMs.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from tagspace.batch import EncodedPosts, make_batch
from tagspace.model import ConvEncoder, TagSpaceModel
from tagspace.packed_posts import DeviceBatch, PackedPosts
from tagspace.precision import check_choice, use_bf16
from tagspace.stream import StreamedPosts
from tagspace.warp import WarpStats, block_warp_loss, sample_sequential_negatives

WARP_MODES = ("block", "sequential")
BATCHING = ("auto", "host", "device")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    lr: float = 0.05  # AdaGrad step size
    batch_size: int = 32
    negatives: int = 1000  # block size S (block WARP) and max draws T (both versions)
    margin: float = 0.1
    warp: str = "block"
    positives: str = "one"  # per post and step: one sampled gold tag (paper) or all of them
    workers: int = 2
    seed: int = 0
    # The CNN's GEMMs in bfloat16 (weights, optimizer state and lookup-table gradients stay
    # fp32): auto (where the device has bf16 units), on, off. ``tagspace.window_max``.
    bf16: str = "auto"
    device: str = "cpu"  # where the model and the steps run: "cpu", "cuda", "cuda:1", ...
    # Where batches of posts in memory are built: "host" (NumPy, each step), "device" (packed
    # onto the model's device once: ``tagspace.packed_posts``), "auto" (device off the CPU).
    batching: str = "auto"

    def __post_init__(self) -> None:
        check_choice(self.bf16)
        torch.device(self.device)  # a clear error for a malformed device name
        if self.warp not in WARP_MODES:
            raise ValueError(f"warp must be one of {WARP_MODES}, got {self.warp!r}")
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {self.batching!r}")
        if self.batching == "device" and self.warp != "block":
            raise ValueError("batching='device' needs warp='block'")
        if self.positives not in ("one", "all"):
            raise ValueError(f"positives must be 'one' or 'all', got {self.positives!r}")
        if self.positives == "all" and self.warp != "block":
            raise ValueError("positives='all' needs warp='block'")
        for name in ("epochs", "batch_size", "negatives", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class StepStats:
    examples: int
    loss: float
    violating: int
    trials: float
    stale_rows: int = 0  # rows not updated: given to another token during the step


@dataclass
class PendingStep:
    """A step's gradients, computed by ``HogwildWorker.forward`` and not applied yet."""

    stats: StepStats
    word_rows: torch.Tensor  # the lookup-table rows the gradients are for
    tag_rows: torch.Tensor
    params: list[torch.Tensor]  # the dense parameters, in the order of grads[2:]
    grads: tuple[torch.Tensor, ...]  # () when no example violates: nothing to apply
    finite_forward: bool = True  # the post embeddings and the loss are finite

    def is_finite(self) -> bool:
        """The forward pass and every gradient are finite (and so are the squares AdaGrad
        accumulates): applying the step cannot put a NaN or an infinity into the model."""
        return self.finite_forward and all(_finite_squares(g) for g in self.grads)


def _finite_squares(g: torch.Tensor) -> bool:
    top = g.abs().amax() if g.numel() else torch.zeros(())
    return bool(torch.isfinite(top)) and float(top) < 1e18


class HogwildWorker:
    """One thread's view of the shared model: its own RNG, optimizer state and autograd."""

    def __init__(
        self, model: TagSpaceModel, config: TrainConfig, rank: int, pad_id: int, unk_id: int
    ):
        if model.config.word_tag_share and config.warp != "block":
            raise ValueError("word-tag sharing is trained with block WARP only")
        if model.word_emb.device.type != "cpu" and config.warp != "block":
            raise ValueError("the sequential WARP sampler runs on the CPU only: use block WARP")
        self.model = model
        self.config = config
        self.rank = rank
        self.rng = np.random.default_rng([config.seed, rank])
        self._generator: torch.Generator | None = None  # for packed batches, made on first use
        self.pad_id, self.unk_id = pad_id, unk_id
        self.encoder = copy.deepcopy(model.encoder)
        for mine, shared in zip(self.encoder.parameters(), model.encoder.parameters(), strict=True):
            mine.data = shared.data  # same memory, this worker's own version counter
        self.encoder.train()
        self.device = model.word_emb.device
        self.bf16 = use_bf16(config.bf16, str(self.device))
        if isinstance(self.encoder, ConvEncoder) and self.bf16:
            self.encoder.compute_dtype = torch.bfloat16
        self.copy_weight = torch.zeros((), device=self.device)
        self.copy_weight.data = model.copy_weight.data  # shared, as the encoder's parameters
        self.copy_weight.requires_grad_(model.config.word_tag_share)
        self._copy_acc = torch.zeros((), device=self.device)
        self._dense_acc = [torch.zeros_like(p) for p in self.encoder.parameters()]
        self._word_acc = torch.zeros(model.word_emb.shape[0], device=self.device)
        self._tag_acc = torch.zeros(model.tag_emb.shape[0], device=self.device)
        # Rows negatives are drawn from (None: all). An online vocabulary sets its used rows.
        self.negative_pool: np.ndarray | None = None
        # Online vocabularies: per row of the word and tag tables, the generation at which its
        # current token got it (see ``apply``). None: rows never change hands.
        self.row_generation: tuple[np.ndarray, np.ndarray] | None = None

    def step(self, word_ids: Sequence[np.ndarray], gold: Sequence[np.ndarray]) -> StepStats:
        """One WARP step on a batch of posts, each with >= 1 known tag id in ``gold``."""
        return self.apply(self.forward(word_ids, gold))

    def step_packed(self, batch: DeviceBatch) -> StepStats:
        """One block-WARP step on a batch already on the model's device."""
        return self.apply(self.forward_packed(batch))

    def forward(self, word_ids: Sequence[np.ndarray], gold: Sequence[np.ndarray]) -> PendingStep:
        """The loss and gradients of one step, nothing applied yet (``apply`` does)."""
        cfg = self.config
        self._grow_state(self.model.word_emb.shape[0], self.model.tag_emb.shape[0])
        ids, mask = make_batch(word_ids, self.model.config, self.pad_id, self.unk_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = np.fromiter((g[self.rng.integers(len(g))] for g in gold), np.int64, len(gold))
        if cfg.warp == "sequential":
            return self._sequential(ids, mask, pos, gold)
        owner = None  # the post each (post, positive) example belongs to; None: example i is post i
        if cfg.positives == "all":
            owner = np.repeat(np.arange(len(gold)), [len(g) for g in gold])
            pos = np.concatenate(gold)
        pool = self.negative_pool
        if pool is None:
            n_tags = None
            negs = self.rng.integers(self.model.tag_emb.shape[0], size=cfg.negatives)
        else:  # the rank estimate counts tags in use only
            negs, n_tags = pool[self.rng.integers(len(pool), size=cfg.negatives)], len(pool)
        valid = _not_gold(negs, gold)
        owner_t = None if owner is None else self._on(owner)
        return self._block(ids, mask, self._on(pos), owner_t, self._on(negs),
                           self._on(valid if owner is None else valid[owner]), n_tags)

    def forward_packed(self, batch: DeviceBatch) -> PendingStep:
        """``forward`` for a batch on the device (``tagspace.packed_posts``): positives and
        negatives are drawn there too, from this worker's own generator on the device."""
        cfg = self.config
        if cfg.warp != "block":
            raise ValueError("packed batches are trained with block WARP")
        self._grow_state(self.model.word_emb.shape[0], self.model.tag_emb.shape[0])
        gen = self._device_generator()
        owner = None
        if cfg.positives == "all":  # the padded rows' tags in row order, -1 padding dropped
            owner = self._on(np.repeat(np.arange(len(batch)), batch.n_gold))
            pos = batch.gold[batch.gold >= 0]
        else:
            n_gold = self._on(batch.n_gold)
            pick = (torch.rand(len(batch), generator=gen, device=self.device) * n_gold).long()
            pos = batch.gold.gather(1, pick.clamp_max(n_gold - 1).unsqueeze(1)).squeeze(1)
        pool = self.negative_pool
        n_tags = None if pool is None else len(pool)
        draws = torch.randint(n_tags or self.model.tag_emb.shape[0], (cfg.negatives,),
                              generator=gen, device=self.device)
        negs = draws if pool is None else self._on(pool)[draws]
        valid = batch.not_gold(negs)
        return self._block(batch.ids, batch.mask, pos, owner, negs,
                           valid if owner is None else valid[owner], n_tags)

    def _device_generator(self) -> torch.Generator:
        if self._generator is None:  # seeded as the host RNG is: (seed, rank)
            seed = np.random.SeedSequence([self.config.seed, self.rank]).generate_state(1)[0]
            self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed(int(seed))
        return self._generator

    def _block(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
               owner: torch.Tensor | None, negs: torch.Tensor, valid: torch.Tensor,
               n_tags: int | None) -> PendingStep:
        """Block WARP on device tensors: (P,) positives of posts ``owner`` (None: P = B, one
        per post), (S,) negatives, (P, S) ``valid``; ``n_tags`` for the rank estimate."""
        cfg = self.config
        words, tags = self.model.word_emb.data, self.model.tag_emb.data
        word_rows, word_index = torch.unique(ids, return_inverse=True)
        x = words[ids].requires_grad_()  # (B, L, d): summed per row below (index_add_, cheap)
        post = self.encoder(x, mask)  # (B, d)
        tag_rows, tag_index = torch.unique(torch.cat([pos, negs]), return_inverse=True)
        t_rows = tags[tag_rows].requires_grad_()
        t_pos, t_neg = t_rows[tag_index[: len(pos)]], t_rows[tag_index[len(pos) :]]
        by_example = post if owner is None else post[owner]
        pos_scores = (by_example * t_pos).sum(1)  # (P,)
        neg_scores = post @ t_neg.T  # (B, S): one GEMM per post, not per pair
        if owner is not None:
            neg_scores = neg_scores[owner]
        if self.model.config.word_tag_share:  # + beta * [t is a word of the post]
            present = self.model.tags_in_posts(ids)
            if owner is not None:
                present = present[owner]  # (P, L)
            in_pos = (present == pos.unsqueeze(1)).any(1)
            in_neg = _draws_in_posts(present, negs)
            pos_scores = pos_scores + self.copy_weight * in_pos
            neg_scores = neg_scores + self.copy_weight * in_neg
        loss, stats = block_warp_loss(
            pos_scores, neg_scores, valid, n_tags or tags.shape[0], cfg.margin, cfg.negatives
        )
        return self._pending(loss, stats, x, t_rows, post, word_rows, word_index, tag_rows,
                             len(ids))

    def _sequential(self, ids: torch.Tensor, mask: torch.Tensor, pos: np.ndarray,
                    gold: Sequence[np.ndarray]) -> PendingStep:
        """The paper's sampler: per post, draws until a violator (host RNG, CPU only)."""
        cfg = self.config
        words, tags = self.model.word_emb.data, self.model.tag_emb.data
        word_rows, word_index = torch.unique(ids, return_inverse=True)
        x = words[ids].requires_grad_()
        post = self.encoder(x, mask)
        pos_t = torch.from_numpy(pos)
        pos_scores = (post * tags[pos_t]).sum(1)
        negs, weights, trials = sample_sequential_negatives(
            post.detach(), pos_scores.detach(), tags, list(gold), cfg.margin,
            cfg.negatives, self.rng, pool=self.negative_pool,
        )
        hit = negs >= 0
        tag_rows, tag_index = torch.unique(
            torch.from_numpy(np.concatenate([pos[hit], negs[hit]])), return_inverse=True
        )
        t_rows = tags[tag_rows].requires_grad_()
        n_hit = int(hit.sum())
        t_pos, t_neg = t_rows[tag_index[:n_hit]], t_rows[tag_index[n_hit:]]
        p_hit = post[torch.from_numpy(hit)]
        hinge = (cfg.margin - (p_hit * t_pos).sum(1) + (p_hit * t_neg).sum(1)).clamp_min(0)
        loss = (torch.from_numpy(weights[hit]).float() * hinge).sum()
        stats = WarpStats(float(loss.detach()), n_hit, float(trials.mean()))
        return self._pending(loss, stats, x, t_rows, post, word_rows, word_index, tag_rows,
                             len(gold))

    def _pending(self, loss: torch.Tensor, stats: WarpStats, x: torch.Tensor,
                 t_rows: torch.Tensor, post: torch.Tensor, word_rows: torch.Tensor,
                 word_index: torch.Tensor, tag_rows: torch.Tensor, n_posts: int) -> PendingStep:
        """The step's gradients: the looked-up word vectors' summed per table row."""
        params: list[torch.Tensor] = list(self.encoder.parameters())
        if self.copy_weight.requires_grad and self.config.warp == "block":
            params.append(self.copy_weight)
        grads: tuple[torch.Tensor, ...] = ()
        if stats.violating:
            grad_x, *rest = torch.autograd.grad(loss, [x, t_rows, *params])
            word_grad = torch.zeros(len(word_rows), x.shape[-1], dtype=grad_x.dtype,
                                    device=self.device)
            word_grad.index_add_(0, word_index.view(-1), grad_x.view(-1, x.shape[-1]))
            grads = (word_grad, *rest)
        finite = math.isfinite(stats.loss) and bool(torch.isfinite(post.detach()).all())
        return PendingStep(StepStats(n_posts, stats.loss, stats.violating, stats.trials),
                           word_rows, tag_rows, params, grads, finite)

    def _on(self, a: np.ndarray) -> torch.Tensor:
        """A host array on the model's device (no copy on the CPU)."""
        return torch.from_numpy(a).to(self.device)

    def apply(self, pending: PendingStep, since: tuple[int, int] | None = None) -> StepStats:
        """Apply a step's AdaGrad updates to the shared model.

        With ``since`` (the word and tag vocabularies' generations read before the batch was
        encoded), rows whose generation is newer were evicted and given to another token while
        the step ran: they are not updated (the gradient is the old token's), and count in
        ``stale_rows``.
        """
        stats = pending.stats
        if not pending.grads:
            return stats
        word_rows, tag_rows = pending.word_rows, pending.tag_rows
        word_grad, tag_grad = pending.grads[0], pending.grads[1]
        if since is not None and self.row_generation is not None:
            word_gen, tag_gen = self.row_generation
            fresh_w = self._on(word_gen[word_rows.cpu().numpy()] <= since[0])
            fresh_t = self._on(tag_gen[tag_rows.cpu().numpy()] <= since[1])
            stats.stale_rows = int((~fresh_w).sum() + (~fresh_t).sum())
            if stats.stale_rows:
                word_rows, word_grad = word_rows[fresh_w], word_grad[fresh_w]
                tag_rows, tag_grad = tag_rows[fresh_t], tag_grad[fresh_t]
        cfg = self.config
        with torch.no_grad():
            self._adagrad_rows(self.model.word_emb.data, self._word_acc, word_rows, word_grad)
            self._adagrad_rows(self.model.tag_emb.data, self._tag_acc, tag_rows, tag_grad)
            for p, acc, g in zip(pending.params, [*self._dense_acc, self._copy_acc],
                                 pending.grads[2:], strict=False):
                acc.addcmul_(g, g)
                p.addcdiv_(g, acc.sqrt().add_(1e-8), value=-cfg.lr)
        return stats

    def _adagrad_rows(
        self, table: torch.Tensor, acc: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor
    ) -> None:
        # Row-wise AdaGrad (one accumulator per row, as StarSpace does): sparse and cheap.
        acc.index_add_(0, rows, grad.pow(2).mean(1))
        scale = -self.config.lr / (acc[rows].sqrt() + 1e-8)
        table.index_add_(0, rows, grad * scale.unsqueeze(1))

    def reset_rows(self, word_rows: Sequence[int], tag_rows: Sequence[int]) -> None:
        """Rows given to new tokens of an online vocabulary start with fresh optimizer state."""
        self._grow_state(self.model.word_emb.shape[0], self.model.tag_emb.shape[0])
        self._word_acc[list(word_rows)] = 0.0
        self._tag_acc[list(tag_rows)] = 0.0

    def _grow_state(self, n_words: int, n_tags: int) -> None:
        # Online vocabularies can grow; new rows start with fresh optimizer state.
        if n_words > len(self._word_acc):
            more = torch.zeros(n_words - len(self._word_acc), device=self.device)
            self._word_acc = torch.cat([self._word_acc, more])
        if n_tags > len(self._tag_acc):
            more = torch.zeros(n_tags - len(self._tag_acc), device=self.device)
            self._tag_acc = torch.cat([self._tag_acc, more])


def _draws_in_posts(present: torch.Tensor, negs: torch.Tensor) -> torch.Tensor:
    """(P, L) ids of the tags spelled as each example's words (-1: none), (S,) draws -> (P, S):
    True where draw j is a word of example i's post.

    Through the distinct draws and a binary search, where comparing every (example, draw, word)
    made a (P, S, L) tensor: 2G elements at a GPU's batch of 16,384 long posts."""
    distinct, inverse = torch.unique(negs, return_inverse=True)  # sorted
    at = torch.searchsorted(distinct, present).clamp_max(len(distinct) - 1)
    hit = distinct[at] == present  # -1 (no tag) never matches: draws are >= 0
    found = torch.zeros(present.shape[0], len(distinct) + 1, dtype=torch.bool,
                        device=present.device)
    found.scatter_(1, torch.where(hit, at, len(distinct)), True)  # misses: a spare column
    return found[:, inverse]


def _not_gold(negs: np.ndarray, gold: Sequence[np.ndarray]) -> np.ndarray:
    """(B, S): True where draw j is not one of post i's known positives.

    Through the sorted draws: each (post, gold tag) pair finds its equal draws by binary search,
    O((B + S) log S) where comparing every pair cost B x S x tags (5 ms of a 75 ms step)."""
    valid = np.ones((len(gold), len(negs)), bool)
    order = np.argsort(negs, kind="stable")
    ranked = negs[order]
    rows = np.repeat(np.arange(len(gold)), [len(g) for g in gold])
    tags = np.concatenate(gold) if len(gold) else np.zeros(0, np.int64)
    lo, hi = np.searchsorted(ranked, tags, "left"), np.searchsorted(ranked, tags, "right")
    for row, a, b in zip(rows[hi > lo], lo[hi > lo], hi[hi > lo], strict=True):
        valid[row, order[a:b]] = False  # rare: a gold tag among the draws
    return valid


# host id arrays and tag ids per post, or a batch packed on the device
Batch = tuple[list[np.ndarray], list[np.ndarray]] | DeviceBatch


@dataclass
class EpochStats:
    epoch: int
    examples: int
    loss: float
    seconds: float


class HogwildTrainer:
    """Trains a model on encoded posts for ``config.epochs`` with ``config.workers`` threads."""

    def __init__(self, model: TagSpaceModel, config: TrainConfig, pad_id: int, unk_id: int):
        self.model = model
        self.config = config
        self.workers = [
            HogwildWorker(model, config, rank, pad_id, unk_id) for rank in range(config.workers)
        ]
        self.rng = np.random.default_rng(config.seed)
        self._errors: list[BaseException] = []

    def fit(
        self,
        data: EncodedPosts | StreamedPosts,
        on_epoch: Callable[[EpochStats], None] | None = None,
        progress: bool = True,
        desc: str = "train",
    ) -> list[EpochStats]:
        """Train for ``config.epochs`` on posts in memory or streamed from files; each worker
        takes the next batch when it is done with its last (the batches run in order)."""
        total = None
        packed = None
        if isinstance(data, EncodedPosts):
            usable = np.flatnonzero([len(t) > 0 for t in data.tags])
            if len(usable) == 0:
                raise ValueError("no training post has a known tag")
            total = len(usable)
            if self._batches_on_device():
                w = self.workers[0]
                packed = PackedPosts(data, self.model.config, w.pad_id, w.unk_id, w.device)
        else:
            total = data.size_hint
        threads_each = max(1, (os.cpu_count() or 1) // self.config.workers)
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads_each)
        history = []
        try:
            for epoch in range(1, self.config.epochs + 1):
                start = time.perf_counter()
                batches = _Batches(self._epoch_batches(packed or data))
                bar = tqdm(
                    total=total, desc=f"{desc} epoch {epoch}/{self.config.epochs}",
                    unit="post", disable=not progress, leave=False,
                )
                losses = [0.0] * len(self.workers)
                examples = [0] * len(self.workers)
                threads = [
                    threading.Thread(target=self._run, args=(w, batches, losses, examples, r, bar),
                                     daemon=True)
                    for r, w in enumerate(self.workers)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                bar.close()
                if self._errors:
                    raise RuntimeError("a Hogwild worker failed") from self._errors[0]
                if sum(examples) == 0:
                    raise ValueError("no training post has a known tag")
                self._check_finite()
                stats = EpochStats(epoch, sum(examples), sum(losses) / sum(examples),
                                   time.perf_counter() - start)
                history.append(stats)
                if on_epoch:
                    on_epoch(stats)
        finally:
            torch.set_num_threads(previous_threads)
        return history

    def _batches_on_device(self) -> bool:
        choice = self.config.batching
        on_device = self.workers[0].device.type != "cpu"
        return self.config.warp == "block" and (choice == "device" or
                                                (choice == "auto" and on_device))

    def _epoch_batches(self, data: EncodedPosts | StreamedPosts | PackedPosts) -> Iterator[Batch]:
        bs = self.config.batch_size
        if isinstance(data, PackedPosts):
            yield from data.epoch(self.rng, bs)
            return
        if isinstance(data, EncodedPosts):
            order = self.rng.permutation(np.flatnonzero([len(t) > 0 for t in data.tags]))
            for i in range(0, len(order), bs):
                idx = order[i : i + bs]
                yield [data.words[j] for j in idx], [data.tags[j] for j in idx]
            return
        words: list[np.ndarray] = []
        tags: list[np.ndarray] = []
        for w, t in data.epoch(self.rng):
            words.append(w)
            tags.append(t)
            if len(words) == bs:
                yield words, tags
                words, tags = [], []
        if words:
            yield words, tags

    def _run(self, worker: HogwildWorker, batches: _Batches, losses: list[float],
             examples: list[int], rank: int, bar: tqdm) -> None:
        try:
            while (batch := batches.next()) is not None:
                if isinstance(batch, DeviceBatch):
                    stats = worker.step_packed(batch)
                else:
                    stats = worker.step(*batch)
                losses[rank] += stats.loss
                examples[rank] += stats.examples
                bar.update(stats.examples)
        except BaseException as e:  # re-raised by fit() in the main thread
            self._errors.append(e)
            batches.close()  # the other workers stop too

    def _check_finite(self) -> None:
        for name, p in self.model.named_parameters():
            if not torch.isfinite(p).all():
                raise FloatingPointError(
                    f"parameter {name} is no longer finite: lower the learning rate"
                )


class _Batches:
    """One epoch's batches, shared by the worker threads: each takes the next when ready (a
    streamed epoch is read from its files by whichever worker needs a batch)."""

    def __init__(self, batches: Iterator[Batch]):
        self._batches: Iterator[Batch] | None = batches
        self._lock = threading.Lock()

    def next(self) -> Batch | None:
        with self._lock:
            if self._batches is None:
                return None
            batch = next(self._batches, None)
            if batch is None:
                self._batches = None
            return batch

    def close(self) -> None:
        with self._lock:
            self._batches = None
