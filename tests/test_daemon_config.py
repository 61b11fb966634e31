"""daemon.config: defaults < config file (TOML) < environment (TAGSPACE_*) < flags."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from daemon.config import (
    ENV_PREFIX,
    ConfigError,
    Settings,
    add_flags,
    host_port,
    load_settings,
    settings_table,
)

FIELDS = [f.name for f in dataclasses.fields(Settings)]


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tagspace daemon")
    add_flags(parser)
    return parser.parse_args(list(argv))


def toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(body)
    return path


def load(args: argparse.Namespace | None = None, config: Path | None = None,
         **env: str) -> Settings:
    return load_settings(args, config, environ=env)


def config_error(*args: object, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(*args, **env)  # type: ignore[arg-type]
    return str(info.value)


# --- defaults ----------------------------------------------------------------------------------

def test_defaults_validate() -> None:
    s = Settings()
    assert s.validate() is s
    assert load() == s
    assert load(flags()) == s
    assert (s.posts_topic, s.interactions_topic, s.dead_letter_topic) == (
        "tagspace.posts", "tagspace.interactions", "tagspace.dead-letter")


def test_an_explicit_environ_ignores_the_process_environment(monkeypatch) -> None:
    monkeypatch.setenv("TAGSPACE_WORKERS", "9")
    assert load().workers == Settings().workers
    assert load_settings(None, None).workers == 9  # environ=None: os.environ


def test_unrelated_environment_variables_are_ignored() -> None:
    assert load(TAGSPACE_NO_SUCH_SETTING="1", PATH="/bin", workers="7") == Settings()


# --- precedence --------------------------------------------------------------------------------

def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = toml(tmp_path, 'workers = 3\nredis_prefix = "file"\nlr = 0.5\n')
    env = {"TAGSPACE_WORKERS": "4", "TAGSPACE_REDIS_PREFIX": "env"}
    assert load(flags("--workers", "5"), path, **env).workers == 5
    s = load(flags(), path, **env)
    assert (s.workers, s.redis_prefix, s.lr) == (4, "env", 0.5)
    s = load(flags(), path)
    assert (s.workers, s.redis_prefix, s.lr) == (3, "file", 0.5)
    s = load(flags("--redis-prefix", "flag"), path, **env)
    assert (s.workers, s.redis_prefix) == (4, "flag")


def test_bool_precedence_and_flags(tmp_path: Path) -> None:
    path = toml(tmp_path, "train = false\nembedded = true\n")
    assert load(flags(), path).train is False
    assert load(flags(), path, TAGSPACE_TRAIN="yes").train is True
    assert load(flags("--no-train"), path, TAGSPACE_TRAIN="yes").train is False
    assert load(flags("--train"), None, TAGSPACE_TRAIN="0").train is True
    assert load(flags(), path).embedded is True
    assert load(flags("--no-embedded"), path).embedded is False
    assert load(flags("--embedded")).embedded is True


def test_unset_flags_do_not_override() -> None:
    args = flags()
    assert all(getattr(args, name) is None for name in FIELDS)
    assert load(args, TAGSPACE_MAX_K="7").max_k == 7


def test_flag_values_are_typed() -> None:
    s = load(flags("--max-k", "7", "--lr", "0.1", "--kafka-bootstrap", "k1:1,k2:2",
                   "--checkpoint-interval-s", "5"))
    assert s.max_k == 7 and s.lr == 0.1 and s.kafka_bootstrap == "k1:1,k2:2"
    assert s.checkpoint_interval_s == 5.0 and isinstance(s.checkpoint_interval_s, float)


@pytest.mark.parametrize(("raw", "expected"), [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("On", True),
    ("0", False), ("false", False), ("No", False), ("off", False), ("", False),
])
def test_bool_environment_values(raw: str, expected: bool) -> None:
    assert load(TAGSPACE_EMBEDDED=raw).embedded is expected


def test_environment_values_are_typed() -> None:
    s = load(TAGSPACE_WORKERS="8", TAGSPACE_LR="0.25", TAGSPACE_CANDIDATE_REFRESH_S="2",
             TAGSPACE_REDIS_URL="rediss://cache.example:6380/1")
    assert s.workers == 8 and s.lr == 0.25 and s.candidate_refresh_s == 2.0
    assert s.redis_url == "rediss://cache.example:6380/1"


# --- config file -------------------------------------------------------------------------------

def test_daemon_table_and_top_level_keys_both_work(tmp_path: Path) -> None:
    table = load(None, toml(tmp_path, '[daemon]\nworkers = 6\nposts_topic = "p"\n'))
    assert (table.workers, table.posts_topic) == (6, "p")
    top = load(None, toml(tmp_path, 'workers = 6\nposts_topic = "p"\n'))
    assert top == table


def test_file_keys_may_use_dashes(tmp_path: Path) -> None:
    s = load(None, toml(tmp_path, 'max-k = 12\n"kafka-bootstrap" = "b:9"\n'))
    assert s.max_k == 12 and s.kafka_bootstrap == "b:9"


def test_file_int_for_float_setting_becomes_float(tmp_path: Path) -> None:
    s = load(None, toml(tmp_path, "lr = 1\nreembed_rate = 50\n"))
    assert s.lr == 1.0 and isinstance(s.lr, float) and isinstance(s.reembed_rate, float)


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load(None, toml(tmp_path, "")) == Settings()


@pytest.mark.parametrize("body", ['no_such_setting = 1\n', '[daemon]\nno_such_setting = 1\n'])
def test_unknown_file_key_is_named(tmp_path: Path, body: str) -> None:
    message = config_error(None, toml(tmp_path, body))
    assert "no_such_setting" in message and "unknown setting" in message


def test_unknown_table_without_daemon_table_is_an_unknown_key(tmp_path: Path) -> None:
    message = config_error(None, toml(tmp_path, "[server]\nworkers = 2\n"))
    assert "server" in message


def test_missing_file_and_bad_toml_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert str(missing) in config_error(None, missing)
    bad = toml(tmp_path, "workers = = 2\n")
    assert str(bad) in config_error(None, bad)


@pytest.mark.parametrize(("body", "name"), [
    ("workers = 2.5\n", "workers"),
    ("workers = true\n", "workers"),
    ("workers = [2]\n", "workers"),
    ("train = 1\n", "train"),
    ("lr = true\n", "lr"),
    ("log_level = 3\n", "log_level"),
    ("kafka_bootstrap = 9092\n", "kafka_bootstrap"),
    ("posts_topic = [\"a\"]\n", "posts_topic"),
    ("[daemon]\nmax_k = { a = 1 }\n", "max_k"),
])
def test_wrong_type_in_file_names_the_setting(tmp_path: Path, body: str, name: str) -> None:
    assert name in config_error(None, toml(tmp_path, body))




@pytest.mark.parametrize(("body", "name"), [
    pytest.param('workers = "two"\n', "workers", id="workers-two"),
    pytest.param('workers = "2"\n', "workers", id="workers-2"),
    pytest.param('lr = "fast"\n', "lr", id="lr-fast"),
    pytest.param('embedded = "false"\n', "embedded",
                 id="embedded-false"),
])
def test_string_for_a_non_string_setting_in_file_is_rejected(tmp_path: Path, body: str,
                                                             name: str) -> None:
    assert name in config_error(None, toml(tmp_path, body))


def test_non_table_daemon_key_is_a_config_error(tmp_path: Path) -> None:
    assert "daemon" in config_error(None, toml(tmp_path, "daemon = 1\n"))


# --- bad values name the setting ---------------------------------------------------------------

@pytest.mark.parametrize(("env", "name"), [
    ({"posts_topic": "my posts"}, "posts_topic"),
    ({"interactions_topic": "a/b"}, "interactions_topic"),
    ({"dead_letter_topic": ""}, "dead_letter_topic"),
    ({"posts_topic": "t" * 250}, "posts_topic"),
    ({"posts_topic": "same", "interactions_topic": "same"}, "dead_letter_topic"),
    ({"dead_letter_topic": "tagspace.posts"}, "dead_letter_topic"),
    ({"kafka_bootstrap": "localhost"}, "kafka_bootstrap"),
    ({"kafka_bootstrap": "host:0"}, "kafka_bootstrap"),
    ({"kafka_bootstrap": "host:65536"}, "kafka_bootstrap"),
    ({"kafka_bootstrap": "host:port"}, "kafka_bootstrap"),
    ({"kafka_bootstrap": ":9092"}, "kafka_bootstrap"),
    ({"kafka_bootstrap": "a:1,,b:2"}, "kafka_bootstrap"),
    ({"kafka_bootstrap": "a:1,b"}, "kafka_bootstrap"),
    ({"http_addr": "8080"}, "http_addr"),
    ({"http_addr": "0.0.0.0:-1"}, "http_addr"),
    ({"redis_url": "http://127.0.0.1:6379"}, "redis_url"),
    ({"redis_url": "localhost:6379"}, "redis_url"),
    ({"redis_url": "redis://"}, "redis_url"),
    ({"redis_prefix": ""}, "redis_prefix"),
    ({"redis_prefix": "a:b"}, "redis_prefix"),
    ({"redis_prefix": "{ts}"}, "redis_prefix"),
    ({"redis_prefix": "a b"}, "redis_prefix"),
    ({"workers": "-1"}, "workers"),
    ({"workers": "0"}, "workers"),
    ({"lr": "-0.1"}, "lr"),
    ({"max_record_bytes": "0"}, "max_record_bytes"),
    ({"checkpoint_interval_s": "0"}, "checkpoint_interval_s"),
    ({"log_level": "LOUD"}, "log_level"),
    ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
    ({"kafka_security_protocol": "sasl_ssl"}, "kafka_security_protocol"),
    ({"train": "maybe"}, "train"),
    ({"embedded": "2"}, "embedded"),
    ({"workers": "two"}, "workers"),
    ({"workers": "2.0"}, "workers"),
    ({"lr": "fast"}, "lr"),
], ids=lambda v: "-".join(v) if isinstance(v, dict) else None)
def test_bad_environment_value_names_the_setting(env: dict[str, str], name: str) -> None:
    message = config_error(**{ENV_PREFIX + k.upper(): v for k, v in env.items()})
    assert name in message and ENV_PREFIX + name.upper() in message


def test_bad_flag_value_names_the_setting() -> None:
    message = config_error(flags("--workers", "-1"))
    assert "workers" in message and "TAGSPACE_WORKERS" in message and "-1" in message
    message = config_error(flags("--posts-topic", "my posts"))
    assert "posts_topic" in message and "'my posts'" in message


def test_redis_embedding_dtype_is_float32_or_float16() -> None:
    assert load(flags("--redis-embedding-dtype", "float16")).redis_embedding_dtype == "float16"
    assert "redis_embedding_dtype" in config_error(flags("--redis-embedding-dtype", "int8"))


def test_open_vocabulary_scorers_must_be_their_folder(tmp_path: Path) -> None:
    message = config_error(flags("--open-vocab-scorers", str(tmp_path)))
    assert "open_vocab_scorers" in message and "scorers.json" in message
    (tmp_path / "scorers.json").write_text("{}")  # what it holds: the serving side's to check
    assert load(flags("--open-vocab-scorers", str(tmp_path))).open_vocab_scorers


def test_bad_file_value_names_the_setting(tmp_path: Path) -> None:
    message = config_error(None, toml(tmp_path, "[daemon]\nworkers = -2\n"))
    assert "workers" in message and "TAGSPACE_WORKERS" in message


def test_bad_bool_environment_message() -> None:
    message = config_error(TAGSPACE_TRAIN="maybe")
    assert "train" in message and "TAGSPACE_TRAIN" in message and "'maybe'" in message


@pytest.mark.parametrize("source", ["env", "file"])
def test_nan_float_setting_is_rejected(tmp_path: Path, source: str) -> None:
    if source == "env":
        message = config_error(TAGSPACE_LR="nan")
    else:
        message = config_error(None, toml(tmp_path, "lr = nan\n"))
    assert "lr" in message


def test_unicode_digit_port_is_a_config_error() -> None:
    assert "kafka_bootstrap" in config_error(TAGSPACE_KAFKA_BOOTSTRAP="broker:²")


@pytest.mark.parametrize("value", [
    "k:9092", "k1:9092,k2:9093", " k1:9092, k2:9093", "[::1]:9092", "10.0.0.1:65535",
])
def test_good_bootstrap_values(value: str) -> None:
    assert load(TAGSPACE_KAFKA_BOOTSTRAP=value).kafka_bootstrap == value


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0", "rediss://user:pw@cache:6380/2", "unix:///tmp/redis.sock",
])
def test_good_redis_urls(url: str) -> None:
    assert load(TAGSPACE_REDIS_URL=url).redis_url == url


def test_host_port() -> None:
    assert host_port("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert host_port(" localhost:1 ") == ("localhost", 1)
    for bad in ("8080", "host:", "host:0", "host:x", ":1"):
        with pytest.raises(ConfigError, match="host:port"):
            host_port(bad)


# --- kafka_options, settings_table -------------------------------------------------------------

def test_kafka_options_default() -> None:
    assert Settings().kafka_options() == {"bootstrap_servers": ["127.0.0.1:9092"],
                                          "security_protocol": "PLAINTEXT"}


def test_kafka_options_pass_sasl_and_ssl_through() -> None:
    s = load(TAGSPACE_KAFKA_BOOTSTRAP="k1:9093,k2:9093",
             TAGSPACE_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
             TAGSPACE_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
             TAGSPACE_KAFKA_SASL_USERNAME="svc", TAGSPACE_KAFKA_SASL_PASSWORD="s3cret",
             TAGSPACE_KAFKA_SSL_CAFILE="/etc/ca.pem")
    assert s.kafka_options() == {
        "bootstrap_servers": ["k1:9093", "k2:9093"], "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc",
        "sasl_plain_password": "s3cret", "ssl_cafile": "/etc/ca.pem"}


def test_kafka_options_ssl_only() -> None:
    s = load(flags("--kafka-security-protocol", "SSL", "--kafka-ssl-cafile", "/ca.pem"))
    assert s.kafka_options() == {"bootstrap_servers": ["127.0.0.1:9092"],
                                 "security_protocol": "SSL", "ssl_cafile": "/ca.pem"}


def test_settings_table_lists_every_field() -> None:
    table = settings_table()
    lines = table.splitlines()
    assert lines[0].startswith("| setting") and len(lines) == len(FIELDS) + 2
    for name, line in zip(FIELDS, lines[2:], strict=True):
        assert line.startswith(f"| `{name}` | `--{name.replace('_', '-')}` | "
                               f"`{ENV_PREFIX}{name.upper()}` | "
                               f"`{getattr(Settings(), name)!r}` |")


def test_every_field_has_a_flag_with_help() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    text = parser.format_help()
    for f in dataclasses.fields(Settings):
        assert f.metadata["help"]
        assert "--" + f.name.replace("_", "-") in text
        assert ENV_PREFIX + f.name.upper() in text


def test_ingest_bf16_takes_its_three_choices_only() -> None:
    assert load(TAGSPACE_INGEST_BF16="off").ingest_bf16 == "off"
    message = config_error(TAGSPACE_INGEST_BF16="fast")
    assert "ingest_bf16" in message and "auto, on, off" in message


def test_serve_nice_takes_nice_values_zero_and_negative_included() -> None:
    assert Settings().serve_nice == -10
    assert load(TAGSPACE_SERVE_NICE="0").serve_nice == 0
    assert load(TAGSPACE_SERVE_NICE="-20").serve_nice == -20
    assert "serve_nice" in config_error(TAGSPACE_SERVE_NICE="20")
    assert "serve_nice" in config_error(TAGSPACE_SERVE_NICE="-21")
    assert "must be a finite number > 0" in config_error(TAGSPACE_WORKERS="0")  # others still


def test_the_training_device_is_checked() -> None:
    assert load(TAGSPACE_TRAIN_DEVICE="cuda:1").train_device == "cuda:1"
    assert "train_device" in config_error(TAGSPACE_TRAIN_DEVICE="gpu")
    message = config_error(TAGSPACE_TRAIN_DEVICE="cuda", TAGSPACE_TRAIN_PROCESS="false")
    assert "needs train_process" in message
