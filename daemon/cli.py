"""The ``tagspace`` console script: the library's commands plus ``daemon`` and ``replay``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from daemon.config import ConfigError, add_flags, host_port, load_settings

log = logging.getLogger("tagspace.daemon")

DAEMON_EPILOG = """Every setting can come from a flag, an environment variable (shown in brackets)
or a TOML config file (--config FILE; keys are the setting names, top level or in a [daemon]
table). Flags beat the environment, which beats the file.

examples:
  tagspace daemon --embedded                  # broker + Redis of its own, on free ports
  TAGSPACE_KAFKA_BOOTSTRAP=kafka:9092 TAGSPACE_REDIS_URL=redis://redis:6379/0 tagspace daemon
  tagspace replay --data posts.jsonl --rate 200 --synthesize-interactions 1.0
  curl -s localhost:8080/v1/suggest -d '{"text": "pasta with garlic", "k": 5}'
"""


def _daemon_args(p: argparse.ArgumentParser) -> None:
    p.epilog = DAEMON_EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_flags(p)
    p.set_defaults(own_config=True)


def cmd_daemon(args: Any) -> int:
    try:
        settings = load_settings(args, args.config)
    except ConfigError as e:
        print(f"tagspace daemon: bad configuration: {e}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(settings.log_level.upper())
    stack = None
    if settings.embedded:
        from kafka.errors import KafkaError

        try:
            settings, stack = _start_embedded(settings)
        except (OSError, RuntimeError, KafkaError) as e:  # PortInUse, an early exit...
            print(f"tagspace daemon: cannot start the embedded servers: {e}", file=sys.stderr)
            return 2
    try:
        from daemon.service import Daemon  # torch: seconds; a taken embedded port fails first

        try:
            daemon = Daemon(settings, after_ingest=None if stack is None else
                            partial(_spill_embedded_broker, stack, settings))
            daemon.start()
        except (ValueError, OSError, RuntimeError) as e:
            print(f"tagspace daemon: cannot start: {e}", file=sys.stderr)
            return 2
        print(f"tagspace daemon: kafka {settings.kafka_bootstrap}  redis {settings.redis_url}  "
              f"http http://{settings.http_addr}  model {settings.model_dir} "
              f"(version {daemon.hub.version}, {daemon.hub.source})", flush=True)
        return daemon.run_until_signalled()
    finally:
        if stack is not None:
            stack.stop()


def _spill_embedded_broker(stack: Any, settings: Any, budget_s: float) -> None:
    from daemon.broker_spill import SpillSource
    from daemon.ingest import subscription

    topics, group = subscription(settings)
    result = stack.spill_and_stop_broker(
        SpillSource(group, tuple(topics), (settings.dead_letter_topic,)), budget_s)
    if result.records:
        log.info("kept %d records the embedded broker held (%s): the next start produces "
                 "them again", result.records, result.path)
    if result.left:
        log.error("the embedded broker still held %d records when the time to keep them ran "
                  "out: they are lost", result.left)


def _start_embedded(settings: Any) -> tuple[Any, Any]:
    """Broker and Redis as children of this (main) thread: they stop with the daemon, also on
    kill -9 (daemon/embedded.py). A port given in the environment that another process holds
    is an error, never a server to attach to."""
    from dataclasses import replace

    from daemon.embedded import MEMORY_WARNING, EmbeddedStack, PortInUse, create_topics

    env = os.environ
    kafka_port = host_port(settings.kafka_bootstrap)[1] \
        if "TAGSPACE_KAFKA_BOOTSTRAP" in env else None
    redis_port = None
    if "TAGSPACE_REDIS_URL" in env:
        from urllib.parse import urlparse

        redis_port = urlparse(settings.redis_url).port
    try:
        stack = EmbeddedStack(kafka_port, redis_port, Path(settings.model_dir) / "embedded")
    except PortInUse as e:
        variable = "TAGSPACE_KAFKA_BOOTSTRAP" if e.server == "tansu" else "TAGSPACE_REDIS_URL"
        raise PortInUse(e.server, e.port, f"; stop that process, or unset {variable} for a "
                        "free port") from None
    try:
        settings = replace(settings, kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url)
        create_topics(stack.bootstrap, [settings.posts_topic, settings.interactions_topic,
                                        settings.dead_letter_topic], settings.topic_partitions)
        restored = stack.restore_spilled()
    except BaseException:
        stack.stop()
        raise
    warning = MEMORY_WARNING.format(dir=stack.workdir)
    log.warning("%s", warning)
    print(f"tagspace daemon: WARNING: {warning}", file=sys.stderr, flush=True)
    if restored:
        log.info("produced again %d records the embedded broker held at the last stop",
                 restored)
    log.info("embedded broker on %s (pid %d), Redis on %s (pid %d)", stack.bootstrap,
             stack.kafka.pid, stack.redis_url, stack.redis.pid)
    return settings, stack


def _replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True,
                   help="posts: JSONL records (sent verbatim), fastText or howyoutagtweets")
    p.add_argument("--rate", type=float, default=None, help="posts per second (default: as "
                   "fast as possible)")
    p.add_argument("--limit", type=int, default=None, help="stop after this many posts")
    p.add_argument("--interactions", type=Path, help="JSONL interaction records to send too")
    p.add_argument("--synthesize-interactions", type=float, default=0.0, metavar="N",
                   help="about N synthesized interactions per post, from users' interests "
                   "(users like posts carrying hashtags they post)")
    p.add_argument("--kafka-bootstrap", default=os.environ.get("TAGSPACE_KAFKA_BOOTSTRAP",
                                                               "127.0.0.1:9092"),
                   help="[TAGSPACE_KAFKA_BOOTSTRAP]")
    p.add_argument("--posts-topic", default="tagspace.posts")
    p.add_argument("--interactions-topic", default="tagspace.interactions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="auto", choices=("auto", "jsonl", "fasttext", "hyt"))


def cmd_replay(args: Any) -> int:
    from kafka import KafkaProducer

    from daemon.replay import replay

    producer = KafkaProducer(bootstrap_servers=args.kafka_bootstrap.split(","), linger_ms=20,
                             enable_idempotence=False, acks="all", retries=5)
    try:
        counts = replay(producer, args.posts_topic, args.interactions_topic, args.data,
                        rate=args.rate, limit=args.limit, fmt=args.format,
                        interactions=args.interactions, synthesize=args.synthesize_interactions,
                        seed=args.seed, progress=not args.quiet)
    finally:
        producer.close(timeout=5)
    print(f"sent {counts.posts} posts and {counts.interactions} interactions to "
          f"{args.kafka_bootstrap}")
    return 0


COMMANDS = {
    "daemon": (cmd_daemon, "run the streaming recommender: Kafka in, online training, Redis "
               "state, HTTP API", _daemon_args),
    "replay": (cmd_replay, "produce a dataset's posts (and interactions) to Kafka at a rate",
               _replay_args),
}


def main(argv: Sequence[str] | None = None) -> int:
    from tagspace.cli import main as library_main

    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO is per-connection chatter
    return library_main(argv, extra=COMMANDS)


if __name__ == "__main__":
    raise SystemExit(main())
