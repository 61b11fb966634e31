"""The ``tagspace`` command line (``tagspace --help``; each subcommand has its own ``--help``).

Options can also come from a TOML config file (``--config FILE``): keys are the long option
names (``epochs = 20``, ``batch-size = 64``), flags on the command line win.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tagspace.dataset import FORMATS, Post, ReadStats, read_posts

log = logging.getLogger("tagspace")

EPILOG = """examples:
  tagspace train --data data/cooking/cooking.train --valid data/cooking/cooking.valid \\
      --model tagspace --dim 64 --out runs/cooking
  tagspace evaluate --model runs/cooking --data data/cooking/cooking.valid
  tagspace suggest --model runs/cooking --k 5 "how long to rest a steak?"
  tagspace compare --train train.csv --test valid.csv --out runs/compare
"""


def main(argv: Sequence[str] | None = None, extra: dict[str, Any] | None = None) -> int:
    """``extra``: more commands, as in ``cli_commands.COMMANDS`` (the service adds its own)."""
    parser = build_parser(extra)
    args = parse_with_config(parser, argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # bad arguments or input: one clear line, no traceback
        print(f"tagspace {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser(extra: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    from tagspace import cli_commands as c

    parser = argparse.ArgumentParser(
        prog="tagspace", description="#TagSpace hashtag and feed recommender "
        "(Weston, Chopra, Adams, EMNLP 2014).", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, help_text, add_args) in (c.COMMANDS | (extra or {})).items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_args(p)
        p.add_argument("--config", type=Path, help="TOML file of option defaults (long names)")
        p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
        p.set_defaults(func=func)
    return parser


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> Any:
    """Parse ``argv``; a ``--config`` TOML file supplies defaults, required options included."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _config_path(argv)
    subparsers: dict[str, argparse.ArgumentParser] = \
        parser._subparsers._group_actions[0].choices  # type: ignore[union-attr,assignment]
    own = argv and argv[0] in subparsers and subparsers[argv[0]].get_default("own_config")
    if path is not None and argv and argv[0] in subparsers and not own:
        try:
            settings = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            parser.error(f"--config {path}: {e}")
        actions = {a.dest: a for a in subparsers[argv[0]]._actions}
        for key, value in settings.items():
            action = actions.get(key.replace("-", "_"))
            if action is None or action.dest in ("config", "help"):
                parser.error(f"--config {path}: unknown setting {key!r} for {argv[0]}")
            if action.type is Path:
                value = [Path(v) for v in value] if isinstance(value, list) else Path(value)
            action.default = value
            action.required = False  # the file supplies it; a flag still wins
    return parser.parse_args(argv)


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def load_posts(
    paths: Sequence[Path], fmt: str, *, require_tags: bool, require_tokens: bool = False
) -> list[Post]:
    """Read every file, log what was skipped and why."""
    posts: list[Post] = []
    for path in paths:
        stats = ReadStats()
        posts.extend(read_posts(path, fmt, stats, require_tags=require_tags,
                                require_tokens=require_tokens))
        log.info("%s: %s", path, stats.summary())
        if stats.posts == 0:
            raise ValueError(f"{path}: no usable posts ({stats.summary()})")
    return posts


def add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="auto", choices=FORMATS, help="dataset file format")


def print_metrics(metrics: dict[str, Any], json_path: Path | None) -> None:
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: None if isinstance(v, float) and v != v else v for k, v in metrics.items()}
        json_path.write_text(json.dumps(clean, indent=2) + "\n")  # NaN -> null: valid JSON


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


if __name__ == "__main__":
    raise SystemExit(main())
