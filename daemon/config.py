"""Daemon settings: defaults < config file (TOML) < environment (TAGSPACE_*) < command-line flags.

Every setting is one field below, with its help text; the flag is ``--name-with-dashes``, the
environment variable ``TAGSPACE_NAME_IN_CAPITALS`` and the config-file key the field name (dashes
or underscores). A bad value stops start-up with a message naming the setting.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tagspace.precision import CHOICES as PRECISION_CHOICES

ENV_PREFIX = "TAGSPACE_"
ROLES = ("all", "serve", "trainer")
SIGNED = frozenset({"serve_nice"})  # numeric settings that may be 0 or negative
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's legal topic names


class ConfigError(ValueError):
    pass


def _s(default: Any, help: str, group: str = "service") -> Any:
    return field(default=default, metadata={"help": help, "group": group})


@dataclass(frozen=True)
class Settings:
    # connections (../shared/CONTRACT.md)
    kafka_bootstrap: str = _s("127.0.0.1:9092", "Kafka bootstrap servers, host:port[,host:port]")
    redis_url: str = _s("redis://127.0.0.1:6379/0", "Redis URL (redis:// or rediss:// for TLS)")
    http_addr: str = _s("127.0.0.1:8080", "host:port of the HTTP API and /metrics")
    model_dir: str = _s("runs/daemon", "model to load (a `tagspace train` output) and where "
                        "checkpoints go")
    embedded: bool = _s(False, "start an embedded Kafka-protocol broker (Tansu) and Redis on "
                        "loopback ports, create the topics, stop them on exit")
    role: str = _s("all", "all: one process ingests, trains and publishes versions; serve: "
                   "a replica that ingests its partitions and serves, loading the versions a "
                   "trainer publishes in model_dir; trainer: trains on every post (its own "
                   "consumer group) and publishes versions")
    serve_process: bool = _s(True, "answer the HTTP API from a child process of its own over "
                             "the model's shared memory, so that ingestion never takes the GIL "
                             "from requests (all and serve roles; false: in the daemon's "
                             "process)")
    serve_processes: int = _s(1, "serving processes (with serve_process): each answers on one "
                              "core, the kernel spreads connections over them; about one per "
                              "core that serving may take")
    serve_nice: int = _s(-10, "nice value of the serving processes (with serve_process): "
                         "below 0 their requests take the CPU before ingestion, the trainer "
                         "and the rest of the machine's work (-20 to 19; below 0 needs root or "
                         "CAP_SYS_NICE, else they stay at 0 and say so in the log)")
    http_threads: int = _s(8, "threads that run the HTTP handlers (suggest, feed, ...): a few "
                           "per core; more only contend for the GIL")
    request_timeout_s: float = _s(10.0, "a connection whose request (headers and body) has "
                                  "not fully arrived this long after it opened, or after its "
                                  "previous answer, is closed: slow or stalled clients cannot "
                                  "hold sockets for ever")
    reload_interval_s: float = _s(5.0, "serve role: how often model_dir is checked for a new "
                                  "version")
    # Kafka
    posts_topic: str = _s("tagspace.posts", "topic of post records", "kafka")
    interactions_topic: str = _s("tagspace.interactions", "topic of interaction records",
                                 "kafka")
    dead_letter_topic: str = _s("tagspace.dead-letter", "topic invalid records go to, with "
                                "the reason and their source", "kafka")
    group_id: str = _s("tagspace", "consumer group: replicas in one group share partitions",
                       "kafka")
    topic_partitions: int = _s(4, "partitions of each topic the daemon creates (embedded)",
                               "kafka")
    session_timeout_ms: int = _s(6000, "consumer group session timeout", "kafka")
    heartbeat_interval_ms: int = _s(2000, "consumer heartbeat interval", "kafka")
    max_poll_records: int = _s(500, "records per poll: one Redis pipeline each", "kafka")
    kafka_security_protocol: str = _s("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or "
                                      "SASL_SSL", "kafka")
    kafka_sasl_mechanism: str = _s("", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL_*)",
                                   "kafka")
    kafka_sasl_username: str = _s("", "SASL user", "kafka")
    kafka_sasl_password: str = _s("", "SASL password (prefer the environment variable)",
                                  "kafka")
    kafka_ssl_cafile: str = _s("", "CA bundle for SSL", "kafka")
    # records
    max_record_bytes: int = _s(64 * 1024, "larger Kafka values are dead-lettered", "records")
    max_text_chars: int = _s(5000, "longer post texts are dead-lettered", "records")
    # Redis state
    redis_prefix: str = _s("ts", "prefix of every Redis key (several deployments can share "
                           "one Redis)", "store")
    history_size: int = _s(200, "positive interactions kept per user, newest first", "store")
    seen_size: int = _s(5000, "posts remembered per user as not to be shown again", "store")
    recent_posts: int = _s(100_000, "newest posts kept as feed candidates", "store")
    redis_embedding_dtype: str = _s("float32", "how post embeddings are written to Redis: "
                                    "float32, or float16 (a post 16.5% smaller, feed recall "
                                    "unchanged: docs/PERFORMANCE.md); both are always read",
                                    "store")
    post_ttl_s: int = _s(30 * 24 * 3600, "a stored post expires after this (keep it above the "
                         "topics' retention)", "store")
    user_ttl_s: int = _s(90 * 24 * 3600, "a user's history and hashtag counts expire this long "
                         "after their last activity", "store")
    event_ttl_s: int = _s(7 * 24 * 3600, "how long an interaction id is remembered for "
                          "deduplication (at least the Kafka retention)", "store")
    # model and online training
    train: bool = _s(True, "train the model online on posts with hashtags", "model")
    workers: int = _s(2, "Hogwild training threads", "model")
    train_process: bool = _s(True, "run the Hogwild threads in a child process at idle CPU "
                             "priority over the model's shared memory, so that serving and "
                             "ingestion never wait for them (false: in the daemon's process)",
                             "model")
    train_yield_max_s: float = _s(0.5, "with train_process: the longest a training step waits "
                                  "for the HTTP requests in flight to be answered (steps run "
                                  "between requests; a saturated API slows training, never "
                                  "stops it)", "model")
    dim: int = _s(64, "embedding dimension of a fresh model", "model")
    hidden: int = _s(1000, "CNN filters H of a fresh model", "model")
    word_capacity: int = _s(200_000, "rows preallocated for words", "model")
    tag_capacity: int = _s(100_000, "rows preallocated for hashtags", "model")
    min_word_count: int = _s(1, "occurrences before a new word gets a row (prequential "
                             "study: 1 beats 2 on both data sets, docs/MODEL.md)", "model")
    min_tag_count: int = _s(2, "occurrences before a new hashtag gets a regular row", "model")
    tag_first_sight: bool = _s(True, "a new hashtag gets a row at its first post, on probation "
                               "(suggestible at once, warm-started at that post's embedding): "
                               "it takes a free row or the least recently seen probationary "
                               "one, never a regular row; min_tag_count posts make it regular "
                               "(false: no row before min_tag_count posts)", "model")
    lr: float = _s(0.02, "AdaGrad step of online training", "model")
    negatives: int = _s(500, "WARP negatives per step", "model")
    batch_size: int = _s(16, "posts per Hogwild step", "model")
    train_queue: int = _s(5000, "tagged posts waiting for training, newest first; beyond "
                          "it the oldest are skipped (counted), ingestion never waits", "model")
    checkpoint_interval_s: float = _s(60.0, "seconds between checkpoints (new model version)",
                                      "model")
    keep_checkpoints: int = _s(3, "checkpoints kept on disk", "model")
    ingest_bf16: str = _s("auto", "embed ingested posts with the encoder under bfloat16: auto "
                          "(where the CPU has bf16 units), on, or off (fp32). About 2x the fp32 "
                          "encode here, the larger part of ingestion; embeddings at cosine "
                          ">= 0.99998 to fp32, 97.6% of each post's 20 nearest posts kept "
                          "(scripts/bench_encode.py)", "model")
    train_bf16: str = _s("auto", "online training's CNN matrix products in bfloat16: auto "
                         "(where the CPU has bf16 units), on, or off (fp32); weights and "
                         "optimizer state stay fp32. The step ran 2.9x fp32 at batch 256, "
                         "d=256, and 1.2x at this daemon's 16 short posts, d=64 "
                         "(scripts/bench_training.py, docs/PERFORMANCE.md)", "model")
    train_device: str = _s("cpu", "where the training process steps: cpu (on the shared model "
                           "itself), cuda or cuda:N (on a copy there; the rows a step changed "
                           "are written back at once, the layers every train_publish_s)",
                           "model")
    train_publish_s: float = _s(1.0, "with train_device off the CPU: seconds between writing "
                                "the trained convolution and output layers back to the served "
                                "model (what a restart of the training process can lose)",
                                "model")
    reembed_rate: float = _s(200.0, "posts per second the re-embedder refreshes at most",
                             "model")
    # serving
    feed_history: int = _s(50, "newest history posts a feed is scored against", "serving")
    feed_ann_min_candidates: int = _s(25_000, "candidates from which feeds may use the ANN "
                                      "index (HNSW), built only when recent_posts reaches it "
                                      "(above recent_posts: exact scans only)", "serving")
    feed_ann_candidates_per_query: int = _s(2500, "a feed uses the ANN index when there are at "
                                            "least this many candidates per history post "
                                            "(the measured crossing with the exact scan)",
                                            "serving")
    max_k: int = _s(100, "largest k a request may ask for", "serving")
    open_vocab_scorers: str = _s("", "a folder of open-vocabulary scorers (`scripts/open_vocab.py "
                                 "--save DIR`): suggestions then also name hashtags the model "
                                 "has never seen (the post's words and runs of words, the "
                                 "author's tags), all ranked by a learned probability; empty: "
                                 "the model's own ranking of its known tags", "serving")
    max_body_bytes: int = _s(64 * 1024, "largest request body", "serving")
    api_token: str = _s("", "bearer token the /v1 API requires when set (admin routes always "
                        "require one); prefer the environment variable", "serving")
    candidate_refresh_s: float = _s(0.5, "how often new posts enter the feed candidates",
                                    "serving")
    log_level: str = _s("INFO", "DEBUG, INFO, WARNING or ERROR", "service")

    def validate(self) -> Settings:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"setting {name} ({ENV_PREFIX}{name.upper()}): {why}")

        for name in ("posts_topic", "interactions_topic", "dead_letter_topic"):
            if not _TOPIC.match(getattr(self, name)):
                raise bad(name, f"{getattr(self, name)!r} is not a valid Kafka topic name")
        if len({self.posts_topic, self.interactions_topic, self.dead_letter_topic}) != 3:
            raise bad("dead_letter_topic", "the three topics must differ")
        for part in self.kafka_bootstrap.split(","):
            _host_port(part, bad("kafka_bootstrap", f"{part!r} is not host:port"))
        _host_port(self.http_addr, bad("http_addr", f"{self.http_addr!r} is not host:port"))
        url = urlparse(self.redis_url)
        if url.scheme not in ("redis", "rediss", "unix") or not (url.hostname or url.path):
            raise bad("redis_url", f"{self.redis_url!r} is not a redis:// URL")
        if not self.redis_prefix or any(c in self.redis_prefix for c in ":{} \n"):
            raise bad("redis_prefix", "must be non-empty without ':', braces or spaces")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and \
                    f.name not in SIGNED and not (math.isfinite(value) and value > 0):
                raise bad(f.name, f"must be a finite number > 0, got {value}")
        if not -20 <= self.serve_nice <= 19:
            raise bad("serve_nice", f"must be a nice value, -20 to 19, got {self.serve_nice}")
        if self.role not in ROLES:
            raise bad("role", f"{self.role!r} is not one of {', '.join(ROLES)}")
        if self.train_queue < self.max_poll_records:
            raise bad("train_queue", f"must be >= max_poll_records ({self.max_poll_records}): "
                      "a smaller buffer would drop most of every batch")
        if self.redis_embedding_dtype not in ("float32", "float16"):
            raise bad("redis_embedding_dtype", f"must be float32 or float16, got "
                      f"{self.redis_embedding_dtype!r}")
        if self.open_vocab_scorers and \
                not (Path(self.open_vocab_scorers) / "scorers.json").is_file():
            raise bad("open_vocab_scorers", f"no scorers.json in {self.open_vocab_scorers}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.train_device):
            raise bad("train_device", f"must be cpu, cuda or cuda:N, got {self.train_device!r}")
        if self.train_device != "cpu" and self.trains and not self.train_process:
            raise bad("train_device", "a device other than the CPU needs train_process")
        for name in ("ingest_bf16", "train_bf16"):
            if getattr(self, name) not in PRECISION_CHOICES:
                raise bad(name, f"must be one of {', '.join(PRECISION_CHOICES)}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise bad("log_level", f"unknown level {self.log_level!r}")
        if self.kafka_security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT",
                                                "SASL_SSL"):
            raise bad("kafka_security_protocol", f"unknown {self.kafka_security_protocol!r}")
        return self

    @property
    def trains(self) -> bool:
        return self.train and self.role != "serve"

    def kafka_options(self) -> dict[str, Any]:
        """Connection options for every Kafka client (security passed through)."""
        options: dict[str, Any] = {"bootstrap_servers": self.kafka_bootstrap.split(","),
                                   "security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            options |= {"sasl_mechanism": self.kafka_sasl_mechanism,
                        "sasl_plain_username": self.kafka_sasl_username,
                        "sasl_plain_password": self.kafka_sasl_password}
        if self.kafka_ssl_cafile:
            options["ssl_cafile"] = self.kafka_ssl_cafile
        return options


def _host_port(value: str, error: ConfigError) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) \
            or not 0 < int(port) < 65536:
        raise error
    return host, int(port)


def host_port(value: str) -> tuple[str, int]:
    return _host_port(value, ConfigError(f"{value!r} is not host:port"))


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (default None: only a given flag overrides file and environment)."""
    groups: dict[str, Any] = {}
    for f in fields(Settings):
        group_name = f.metadata["group"]
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(f"{group_name} settings")
        group = groups[group_name]
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        help_text = f"{f.metadata['help']} [{env}; default {f.default!r}]".replace("%", "%%")
        if f.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(flag, type=_PARSERS[str(f.type)], default=None, metavar="X",
                               help=help_text)


_PARSERS = {"str": str, "int": int, "float": float}
_FIELDS = {f.name: f for f in fields(Settings)}


def load_settings(args: argparse.Namespace | None = None, config: Path | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    if config is not None:
        try:
            data = tomllib.loads(Path(config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"config file {config}: {e}") from e
        data = data.get("daemon", data)  # a [daemon] table, or top-level keys
        if not isinstance(data, dict):
            raise ConfigError(f"config file {config}: 'daemon' must be a table")
        for key, value in data.items():
            name = _field_name(key, f"config file {config}")
            values[name] = _check_type(_FIELDS[name], value)
    for f in fields(Settings):
        raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _convert(f, raw, ENV_PREFIX + f.name.upper())
    for f in fields(Settings):
        given = getattr(args, f.name, None) if args is not None else None
        if given is not None:
            values[f.name] = given
    return Settings(**values).validate()


def _field_name(key: str, where: str) -> str:
    name = key.replace("-", "_")
    if name not in {f.name for f in fields(Settings)}:
        raise ConfigError(f"{where}: unknown setting {key!r}")
    return name


def _convert(f: Any, raw: str, where: str) -> Any:
    kind = str(f.type)
    try:
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        return _PARSERS[kind](raw)
    except ValueError:
        raise ConfigError(f"setting {f.name} ({where}): {raw!r} is not a {kind}") from None


def _check_type(f: Any, value: Any) -> Any:
    kind = str(f.type)
    ok = {"bool": isinstance(value, bool), "str": isinstance(value, str),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, int | float) and not isinstance(value, bool)}
    if not ok.get(kind, False):
        raise ConfigError(f"setting {f.name}: {value!r} is not a {kind}")
    return float(value) if kind == "float" else value


def settings_argv(settings: Settings) -> list[str]:
    """The flags that reproduce ``settings`` (to start another daemon process with them)."""
    argv = []
    for f in fields(Settings):
        value = getattr(settings, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return argv


def settings_table() -> str:
    """Markdown: every setting with its flag, environment variable and default (for docs)."""
    rows = ["| setting (file key) | flag | environment | default | meaning |",
            "|---|---|---|---|---|"]
    for f in fields(Settings):
        default = f.default if f.default is not MISSING else ""
        rows.append(f"| `{f.name}` | `--{f.name.replace('_', '-')}` | "
                    f"`{ENV_PREFIX}{f.name.upper()}` | `{default!r}` | {f.metadata['help']} |")
    return "\n".join(rows)
