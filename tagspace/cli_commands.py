"""The subcommands of ``tagspace``: arguments and what each one does."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tagspace.cli import Timer, add_format, load_posts, print_metrics
from tagspace.cli_prequential import cmd_prequential, prequential_args

log = logging.getLogger("tagspace")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, action="append", required=True,
                   help="training posts (repeatable)")
    p.add_argument("--valid", type=Path, help="validation posts: reported after training and "
                   "used to tune the author-history weight when posts have authors")
    p.add_argument("--model", choices=("tagspace", "wsabie"), default="tagspace")
    p.add_argument("--dim", type=int, default=256, help="embedding dimension d")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--json", type=Path, help="write the validation metrics as JSON")
    g = p.add_argument_group("data larger than memory")
    g.add_argument("--stream", action="store_true",
                   help="read --data from disk on every pass instead of holding its posts: one "
                   "pass builds the vocabularies, each epoch is a buffered shuffle (the "
                   "author-history weights are not tuned: they would hold every author's posts)")
    g.add_argument("--shuffle-buffer", type=int, default=100_000,
                   help="with --stream: posts held for shuffling (larger: closer to a full "
                   "shuffle, more memory)")
    add_format(p)
    add_training_options(p)


def add_training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and training")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--lr", type=float, default=None,
                   help="AdaGrad step (default: 0.01 for tagspace, 0.05 for wsabie)")
    g.add_argument("--batch-size", type=int, default=32, help="posts per Hogwild step")
    g.add_argument("--negatives", type=int, default=1000,
                   help="WARP: negatives per block / max draws per example")
    g.add_argument("--margin", type=float, default=0.1, help="WARP margin m")
    g.add_argument("--warp", choices=("block", "sequential"), default="block",
                   help="WARP sampler: block (one GEMM per step) or the paper's sequential one")
    g.add_argument("--positives", choices=("one", "all"), default="all",
                   help="per post and step: one sampled gold tag (paper) or every gold tag")
    g.add_argument("--word-tag-share", action=argparse.BooleanOptionalAction, default=True,
                   help="#TagSpace: learned bonus for tags that are words of the post")
    g.add_argument("--workers", type=int, default=2,
                   help="Hogwild threads (on a GPU: threads that prepare batches in turn)")
    g.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="the CNN's matrix products in bfloat16: auto (where the CPU or GPU has "
                        "bf16 units), on, or off (fp32); weights and optimizer state stay fp32")
    g.add_argument("--device", default="cpu",
                   help="where training runs: cpu, cuda or cuda:N (block WARP only)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--kernel", type=int, default=5, help="CNN window K")
    g.add_argument("--hidden", type=int, default=1000, help="CNN filters H")
    g.add_argument("--dropout", type=float, default=0.5, help="dropout on pooled CNN features")
    g.add_argument("--init", choices=("wsabie", "random"), default="wsabie",
                   help="tagspace lookup tables: from a WSABIE model trained first, or random")
    g.add_argument("--init-epochs", type=int, default=10, help="WSABIE epochs for --init wsabie")
    g.add_argument("--min-word-count", type=int, default=1)
    g.add_argument("--max-words", type=int, default=1_000_000)
    g.add_argument("--max-tags", type=int, default=100_000)


def train_configs(args: Any, model_name: str) -> tuple[Any, Any, Any]:
    from tagspace.hogwild import TrainConfig
    from tagspace.model import ModelConfig
    from tagspace.training import VocabConfig

    default_lr = 0.01 if model_name == "tagspace" else 0.05
    train = TrainConfig(
        epochs=args.epochs, lr=default_lr if args.lr is None else args.lr,
        batch_size=args.batch_size,
        negatives=args.negatives, margin=args.margin, warp=args.warp, workers=args.workers,
        seed=args.seed, positives=args.positives if args.warp == "block" else "one",
        bf16=args.bf16, device=args.device,
    )
    model = ModelConfig(dim=args.dim, kernel=args.kernel, hidden=args.hidden,
                        dropout=args.dropout,
                        word_tag_share=args.word_tag_share and model_name == "tagspace"
                        and args.warp == "block")
    vocab = VocabConfig(min_word_count=args.min_word_count, max_words=args.max_words,
                        max_tags=args.max_tags)
    return train, model, vocab


def cmd_train(args: Any) -> int:
    from dataclasses import replace

    from tagspace.bow import BagOfWords
    from tagspace.checkpoint import Checkpoint, check_writable, save_checkpoint
    from tagspace.dataset import Post
    from tagspace.evaluate import evaluate
    from tagspace.personalize import AuthorProfiles, save_personalization, tune_weights
    from tagspace.stream import PostFiles
    from tagspace.training import build_vocabularies, train_tagger

    check_writable(args.out)  # fail now, not after an hour of training
    posts: list[Post] | PostFiles = (
        PostFiles(args.data, args.format) if args.stream
        else load_posts(args.data, args.format, require_tags=True, require_tokens=True))
    valid = load_posts([args.valid], args.format, require_tags=True) if args.valid else None
    train_cfg, model_cfg, vocab_cfg = train_configs(args, args.model)
    progress = not args.quiet
    vocabs = build_vocabularies(posts, vocab_cfg)
    log.info("vocabularies: %d words, %d tags", len(vocabs[0]), len(vocabs[1]))
    with Timer() as timer:
        init = None
        if args.model == "tagspace" and args.init == "wsabie":
            wsabie_cfg = replace(train_cfg, epochs=args.init_epochs, lr=0.05)
            init = train_tagger(posts, "wsabie", replace(model_cfg, word_tag_share=False),
                                wsabie_cfg, progress=progress,
                                vocabularies=vocabs, shuffle_buffer=args.shuffle_buffer)
        tagger = train_tagger(  # logs each epoch unless --quiet
            posts, args.model, model_cfg, train_cfg, progress=progress, vocabularies=vocabs,
            init_from=init, shuffle_buffer=args.shuffle_buffer,
        )
    bow = None
    extra: dict[str, Any] = {"train_seconds": round(timer.seconds, 1),
                             "train_files": [str(p) for p in args.data]}
    if valid:
        metrics = evaluate(tagger, valid, progress=progress).metrics
        print(f"validation ({args.valid}):")
        print_metrics(metrics.to_dict(), args.json)
        extra["valid"] = metrics.to_dict()
        profiles = AuthorProfiles.from_posts(posts if isinstance(posts, list) else ())
        if isinstance(posts, PostFiles):
            log.info("--stream: the author-history weights are not tuned")
        if len(profiles) and any(p.user_id for p in valid):
            # the IDF of the lexical term: the training authors' posts, stored with the model
            bow = BagOfWords([t for h in profiles.histories.values() for t in h.post_tokens])
            weights, _ = tune_weights(tagger, profiles, valid, bow=bow)
            extra["personalize"] = weights.to_dict()
            log.info("author-history weights tuned on %s: %s", args.valid, weights)
    train_dict = {**train_cfg.to_dict(), "init": args.init if args.model == "tagspace" else None}
    out = save_checkpoint(args.out, Checkpoint(tagger, train_dict, extra))
    if bow is not None:
        save_personalization(out, bow)
    print(f"model written to {out} ({timer.seconds:.0f} s to train)")
    return 0


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="model directory")
    p.add_argument("--data", type=Path, required=True, help="posts to evaluate")
    p.add_argument("--personalize", type=Path, action="append", default=[],
                   help="posts whose authors' hashtags form each author's profile (repeatable; "
                   "typically the training files)")
    p.add_argument("--weights", default=None, metavar="A,B,C,G",
                   help="author-history weights: count, model similarity, TF-IDF similarity, "
                   "popularity (default: those tuned at training time; docs/MODEL.md)")
    p.add_argument("--json", type=Path, help="also write the metrics as JSON")
    add_format(p)


def cmd_evaluate(args: Any) -> int:
    from tagspace.checkpoint import load_checkpoint
    from tagspace.evaluate import evaluate

    checkpoint = load_checkpoint(args.model)
    posts = load_posts([args.data], args.format, require_tags=True)
    scorer = _maybe_personalized(checkpoint, args.model, args.personalize, args.weights,
                                 args.format,
                                 exclude={p.post_id for p in posts})
    metrics = evaluate(scorer, posts, progress=not args.quiet).metrics
    print_metrics(metrics.to_dict(), args.json)
    return 0


def _maybe_personalized(checkpoint: Any, model_dir: Path, files: list[Path], weights: str | None,
                        fmt: str, exclude: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    """The model's scorer, plus authors' histories from ``files`` when given.

    Posts in ``exclude`` (the evaluated ones) never enter a profile: their own tags are gold.
    """
    from tagspace.personalize import (
        DEFAULT_WEIGHTS,
        AuthorProfiles,
        PersonalizedScorer,
        PersonalizeWeights,
        load_personalization,
    )

    if not files:
        return checkpoint.tagger
    history = load_posts(files, fmt, require_tags=True)
    kept = [p for p in history if p.post_id not in exclude]
    if len(kept) < len(history):
        log.warning("%d profile posts are also evaluated posts: left out of the profiles",
                    len(history) - len(kept))
    profiles = AuthorProfiles.from_posts(kept)
    chosen, bow = load_personalization(model_dir, checkpoint.extra, DEFAULT_WEIGHTS)
    if weights is not None:
        try:
            chosen = PersonalizeWeights(*(float(x) for x in weights.split(",")))
        except (ValueError, TypeError):
            raise ValueError("--weights must be COUNT,SIMILARITY,LEXICAL,POPULARITY (numbers), "
                             f"got {weights!r}") from None
    elif "personalize" not in checkpoint.extra:
        log.warning("the model has no tuned author-history weights; using %s (see --weights)",
                    chosen)
    log.info("personalized by %d author profiles, %s; IDF %s", len(profiles), chosen,
             "stored with the model" if bow is not None else "fitted on the profiles")
    return PersonalizedScorer(checkpoint.tagger, profiles, chosen, bow)


def _suggest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="model directory")
    p.add_argument("--k", type=int, default=10, help="how many tags")
    p.add_argument("--user", help="the author (needs --personalize)")
    p.add_argument("--personalize", type=Path, action="append", default=[],
                   help="posts that form the authors' hashtag profiles")
    p.add_argument("--json", type=Path, help="also write the suggestions as JSON")
    add_format(p)
    p.add_argument("text", help="the post text")


def cmd_suggest(args: Any) -> int:
    import json

    from tagspace.checkpoint import load_checkpoint
    from tagspace.dataset import Post
    from tagspace.tagger import top_k
    from tagspace.text import tokenize

    if args.k < 1:
        raise ValueError("--k must be >= 1")
    if args.user and not args.personalize:
        raise ValueError("--user needs --personalize FILE (the posts that form the profiles)")
    checkpoint = load_checkpoint(args.model)
    scorer = _maybe_personalized(checkpoint, args.model, args.personalize, None, args.format)
    post = Post("cli", args.user, None, tokenize(args.text), ())
    best = top_k(scorer.scores([post])[0], checkpoint.tagger.tags, args.k)
    for s in best:
        print(f"#{s.tag}\t{s.score:.4f}")
    if args.json:
        args.json.write_text(json.dumps([{"tag": s.tag, "score": s.score} for s in best]) + "\n")
    return 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", type=Path, required=True, help="training posts")
    p.add_argument("--test", type=Path, required=True, help="posts to evaluate on")
    p.add_argument("--valid", type=Path,
                   help="posts to tune the author-history weights on (personalized rows need it)")
    p.add_argument("--out", type=Path, required=True, help="directory for table.md, "
                   "results.json and plot.png")
    p.add_argument("--dims", default="64,128,256", help="comma-separated dimensions")
    p.add_argument("--wsabie-epochs", type=int, default=10)
    p.add_argument("--word2vec-epochs", type=int, default=60,
                   help="word2vec passes (60: its best on howyoutagtweets valid)")
    add_format(p)
    add_training_options(p)


def cmd_compare(args: Any) -> int:
    from dataclasses import replace

    from tagspace.compare import CompareConfig, markdown_table, run_compare, write_report

    train = load_posts([args.train], args.format, require_tags=True, require_tokens=True)
    test = load_posts([args.test], args.format, require_tags=True)
    valid = load_posts([args.valid], args.format, require_tags=True) if args.valid else None
    try:
        dims = tuple(int(d) for d in args.dims.split(","))
    except ValueError:
        raise ValueError(f"--dims must be comma-separated integers, got {args.dims!r}") from None
    args.dim = dims[0]  # replaced per dimension by run_compare
    train_cfg, model_cfg, vocab_cfg = train_configs(args, "tagspace")
    wsabie_cfg = replace(train_cfg, epochs=args.wsabie_epochs, lr=0.05)
    config = CompareConfig(dims=dims, tagspace=train_cfg, wsabie=wsabie_cfg, model=model_cfg,
                           vocab=vocab_cfg, word2vec_epochs=args.word2vec_epochs,
                           init_from_wsabie=args.init == "wsabie")
    with Timer() as timer:
        report = run_compare(train, test, config, valid, progress=not args.quiet,
                             on_row=lambda r: log.info("%s %s: %s", r.method, r.dim or "",
                                                       r.metrics))
    report["seconds"] = round(timer.seconds, 1)
    report["command"] = {k: str(v) for k, v in vars(args).items() if k != "func"}
    write_report(report, args.out)
    print(markdown_table(report))
    print(f"written to {args.out}/ (table.md, results.json, plot.png) in {timer.seconds:.0f} s")
    return 0


def _eval_recommend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="model directory")
    p.add_argument("--data", type=Path, required=True,
                   help="posts with authors; per user: history = all but the last, target = last")
    p.add_argument("--history", type=Path,
                   help="take histories from these posts instead, and each user's first post "
                   "in --data as the target (howyoutagtweets: --history train.csv)")
    p.add_argument("--negatives", type=int, default=10_000, help="candidates from other users")
    p.add_argument("--seed", type=int, default=0, help="seed of the candidate draw")
    p.add_argument("--bow-weight", type=float, default=1.0,
                   help="model+bow: model score + this x bag-of-words score")
    p.add_argument("--json", type=Path, help="also write the metrics as JSON")
    add_format(p)


def cmd_eval_recommend(args: Any) -> int:
    import json

    from tagspace.bow import BagOfWords
    from tagspace.checkpoint import load_checkpoint
    from tagspace.recommend import build_task, max_cosine_matrix, metrics_from_scores, unit_rows

    tagger = load_checkpoint(args.model).tagger
    posts = load_posts([args.data], args.format, require_tags=False)
    history = load_posts([args.history], args.format, require_tags=False) if args.history else None
    with Timer() as timer:
        task = build_task(posts, args.negatives, args.seed, history)
        tokens = [p.tokens for p in task.posts]
        bow = max_cosine_matrix(task, BagOfWords(tokens).transform(tokens))
        model = max_cosine_matrix(task, unit_rows(tagger.embed_all(tokens)))
        scores = {"bow": bow, "model": model, "model+bow": model + args.bow_weight * bow}
        results = {name: metrics_from_scores(s).to_dict() for name, s in scores.items()}
    log.info("%d users evaluated, %d skipped (a single post), %.1f s", len(task.users),
             task.skipped_users, timer.seconds)
    print(f"{'method':<10} {'P@1':>7} {'R@10':>7} {'R@50':>7} users")
    for name, m in results.items():
        print(f"{name:<10} {m['p_at_1']:7.4f} {m['r_at_10']:7.4f} {m['r_at_50']:7.4f} "
              f"{m['n_users']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


Command = tuple[Callable[[Any], int], str, Callable[[argparse.ArgumentParser], None]]
COMMANDS: dict[str, Command] = {
    "train": (cmd_train, "train a #TagSpace or WSABIE model on posts with hashtags", _train_args),
    "evaluate": (cmd_evaluate, "P@1, R@10 and mean rank of a model on posts", _evaluate_args),
    "suggest": (cmd_suggest, "suggest hashtags for a text", _suggest_args),
    "compare": (cmd_compare, "the paper's Tables 3/4: all baselines and dimensions",
                _compare_args),
    "eval-recommend": (cmd_eval_recommend, "document recommendation by max cosine over each "
                       "user's history (paper section 4.3)", _eval_recommend_args),
    "prequential": (cmd_prequential, "online quality: replay posts through the online learner, "
                    "test then train, and report the P@1 / R@10 curve", prequential_args),
}
