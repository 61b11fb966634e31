"""The HTTP API in a child process of its own: serving never shares a GIL with ingestion.

The daemon's process keeps the Kafka consumer, the vocabularies' owner, the checkpoints and the
training process; this child answers every route. It serves with the daemon's weights in shared
memory and replicas of its vocabularies (``daemon.model_mirror``), reads Redis itself, keeps its
own feed candidates (and re-embeds stale posts), and freezes its start-up heap, so no
collection of it ever stops a request.

One pipe joins the two. The daemon sends the admissions of new words and tags and each new
model version a few milliseconds after they happen; the child asks the daemon for what only the
daemon knows (readiness, a checkpoint) and hands it its metrics to expose with the daemon's,
merged (``/metrics`` is one exposition). The listening socket is the daemon's: bound before the
child starts (a port in use fails start-up at once), inherited by every child it starts.

Faults: a child that dies is started again (``tagspace_server_restarts_total``) on the same
socket, so connections wait in its backlog for the seconds a start takes; it dies with the
daemon (``PR_SET_PDEATHSIG``). The serve role's child loads the published versions itself, as
the daemon's process does for ingestion.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import torch.multiprocessing as mp

from daemon.config import Settings, host_port
from daemon.serving import reembed_posts

if TYPE_CHECKING:
    from daemon.service import Daemon

log = logging.getLogger(__name__)
PUBLISH_EVERY_S = 0.005  # admissions reach the server at most this late (plus the pipe)
START_TIMEOUT_S = 120.0  # a child imports torch and loads candidates before it answers
RESTART_BACKOFF_S = 1.0
CALL_TIMEOUT_S = 30.0  # a checkpoint can take seconds
SWITCH_INTERVAL_S = 0.001


class Link:
    """One end of the pipe: sends from any thread, calls that wait for their reply."""

    def __init__(self, conn: Any):
        self.conn = conn
        self._send_lock = threading.Lock()
        self._waiting: dict[int, Future] = {}
        self._ids = itertools.count()

    def send(self, *message: Any) -> None:
        with self._send_lock:
            self.conn.send(message)

    def call(self, name: str, payload: Any = None, timeout: float = CALL_TIMEOUT_S) -> Any:
        future: Future = Future()
        call_id = next(self._ids)
        self._waiting[call_id] = future
        try:
            self.send("call", call_id, name, payload)
            return future.result(timeout)
        finally:
            self._waiting.pop(call_id, None)

    def resolve(self, call_id: int, value: Any) -> None:
        future = self._waiting.get(call_id)
        if future is not None:
            future.set_result(value)

    def fail_all(self) -> None:
        for future in list(self._waiting.values()):
            future.set_exception(ConnectionError("the daemon's process is gone"))


class ServingProcess:
    """The daemon's side: starts the child on the daemon's socket, feeds it the vocabulary
    admissions and versions, answers its calls, and starts it again if it dies."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.settings = daemon.settings
        self.restarts = 0
        self._ctx = mp.get_context("spawn")
        self._sock: socket.socket | None = None
        self._proc: Any = None
        self._link: Link | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent_version = -1

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        host, port = host_port(self.settings.http_addr)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            raise RuntimeError(f"the HTTP server could not listen on "
                               f"{self.settings.http_addr}: {e}") from e
        sock.listen(2048)
        self._sock = sock
        self._spawn()
        self._thread = threading.Thread(target=self._run, name="serve-link", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        d = self.daemon
        parent_end, child_end = self._ctx.Pipe()
        spec: dict[str, Any] = {"version": d.hub.version, "version_time": d.hub.version_time}
        if self.settings.role != "serve":  # the live model: shared weights, replicas
            from daemon.shared_model import share

            spec["shared"] = share(d.hub.online)
            spec["words"], spec["tags"] = d.hub.online.replicas()
            spec["personalize"] = (d.hub.personalizer.weights, d.hub.personalizer.bow)
        self._sent_version = d.hub.version
        self._proc = self._ctx.Process(
            target=_child_main, name="tagspace-server", daemon=True,
            args=(os.getpid(), self.settings, spec, child_end, self._sock))
        self._proc.start()
        child_end.close()
        self._link = Link(parent_end)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if parent_end.poll(0.1):
                message = parent_end.recv()
                if message[0] == "ready":
                    log.info("serving process %d answers on http://%s", self._proc.pid,
                             self.settings.http_addr)
                    return
                if message[0] == "failed":
                    raise RuntimeError(f"the serving process could not start: {message[1]}")
            elif not self._proc.is_alive():
                raise RuntimeError(f"the serving process exited at start "
                                   f"(code {self._proc.exitcode})")
        self._proc.kill()
        raise RuntimeError(f"the serving process did not start within {START_TIMEOUT_S:g} s")

    def _run(self) -> None:
        """Publish admissions and versions, answer calls, restart a dead child."""
        while not self._stopping.is_set():
            link = self._link
            assert link is not None
            try:
                while link.conn.poll(PUBLISH_EVERY_S):
                    self._handle(link, link.conn.recv())
                self._publish(link)
                continue
            except (EOFError, OSError, BrokenPipeError):
                pass  # the child is gone
            if self._stopping.is_set():
                return
            self._restart()

    def _handle(self, link: Link, message: tuple) -> None:
        if message[0] == "call":
            _, call_id, name, payload = message
            threading.Thread(target=self._answer, args=(link, call_id, name, payload),
                             name=f"serve-call-{name}", daemon=True).start()

    def _answer(self, link: Link, call_id: int, name: str, payload: Any) -> None:
        d = self.daemon
        try:
            if name == "metrics":
                value: Any = d.exposition(payload)
            elif name == "ready":
                value = d.readiness_problems()
            elif name == "reembed":
                value = reembed_posts(d.hub, d.store, payload)
            elif name == "checkpoint":
                ok = d.checkpoint()
                value = (ok, d.hub.version, d.hub.version_time)
            else:
                value = None
        except Exception:  # the child gets None; the daemon logs why
            log.exception("answering the serving process's %s failed", name)
            value = None
        try:
            link.send("reply", call_id, value)
        except (OSError, BrokenPipeError):
            pass

    def _publish(self, link: Link) -> None:
        hub = self.daemon.hub
        words, tags = hub.online.take_admissions()
        version = hub.version
        if words or tags or version != self._sent_version:
            link.send("model", words, tags, version, hub.version_time)
            self._sent_version = version

    def _restart(self) -> None:
        code = self._proc.exitcode if self._proc is not None else None
        log.error("the serving process exited (code %s): starting it again", code)
        self.restarts += 1
        self.daemon.metrics.server_restarts.inc()
        while not self._stopping.wait(RESTART_BACKOFF_S):
            try:
                self._spawn()
                return
            except Exception:
                log.exception("restarting the serving process failed")

    def request_stop(self) -> None:
        """Stop answering: requests in flight finish (within the HTTP grace period)."""
        self._stopping.set()
        if self._link is not None:
            try:
                self._link.send("stop")
            except (OSError, BrokenPipeError):
                pass

    def join(self, timeout: float = 3.0) -> None:
        """Wait for the child to exit (killed past ``timeout``); the socket closed."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        if self._proc is not None:
            self._proc.join(max(0.1, deadline - time.monotonic()))
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(1.0)
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        if self._sock is not None:
            self._sock.close()


class ServingNode:
    """The child's side: what ``daemon.api`` serves from, with the daemon's answers by call."""

    def __init__(self, settings: Settings, link: Link, spec: dict[str, Any]):
        from daemon.metrics import Metrics
        from daemon.model_hub import ModelHub, serving_personalizer
        from daemon.model_mirror import ModelMirror
        from daemon.serving import Serving, connect_store

        self.settings, self.link = settings, link
        self.metrics = Metrics()
        self.store = connect_store(settings, self.metrics)
        self.mirror: ModelMirror | None = None
        self.hub: Any
        if "shared" in spec:
            self.mirror = self.hub = ModelMirror(
                spec["shared"], spec["words"], spec["tags"],
                serving_personalizer(*spec["personalize"]), spec["version"],
                spec["version_time"])
        else:  # serve role: the published versions, loaded here too
            self.hub = ModelHub.from_settings(settings, self.metrics)
        # re-embedding (reading tokens, the CNN, writing back) is the daemon process's work
        self.serving = Serving(settings, self.store, self.hub, self.metrics,
                               reembedder=lambda ids: link.call("reembed", ids))
        self.scorer, self.feeds = self.serving.scorer, self.serving.feeds
        self.trains = settings.trains
        self.stop_event = threading.Event()

    # what daemon.api asks for
    def exposition(self) -> bytes:
        value = self.link.call("metrics", list(self.metrics.registry.collect()))
        if value is None:
            raise RuntimeError("the daemon's process could not render the metrics")
        return bytes(value)

    def readiness_problems(self) -> list[str]:
        try:
            value = self.link.call("ready", timeout=5.0)
        except TimeoutError:
            return ["the daemon's process does not answer"]
        return list(value) if value is not None else ["the daemon's process failed"]

    def checkpoint(self) -> bool:
        value = self.link.call("checkpoint")
        if value is None:
            return False
        ok, version, version_time = value
        if self.mirror is not None and version > self.mirror.version:
            self.mirror.set_version(version, version_time)
        return bool(ok)

    # the child's threads
    def listen(self) -> None:
        """The daemon's messages: admissions and versions, replies, stop."""
        conn = self.link.conn
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the daemon is gone
                self.link.fail_all()
                self.stop_event.set()
                return
            kind = message[0]
            if kind == "model" and self.mirror is not None:
                _, words, tags, version, version_time = message
                self.mirror.apply(words, tags)
                self.mirror.set_version(version, version_time)
            elif kind == "reply":
                self.link.resolve(message[1], message[2])
            elif kind == "stop":
                self.stop_event.set()
                return

    def maintain(self) -> None:
        """New candidates and re-embedding; the serve role's version reloads."""
        import redis

        s = self.settings
        last_reload = time.monotonic()
        while not self.stop_event.wait(s.candidate_refresh_s):
            if self.mirror is None and time.monotonic() - last_reload >= s.reload_interval_s:
                last_reload = time.monotonic()
                try:
                    self.hub.reload_if_newer()
                except Exception:  # a half-copied or bad checkpoint: keep the current model
                    log.exception("loading a published model version failed")
            try:
                self.serving.maintain()
            except redis.RedisError as e:
                log.warning("serving maintenance: Redis unavailable: %s", e)
            except Exception:
                log.exception("serving maintenance step failed")


def _child_main(parent: int, settings: Settings, spec: dict[str, Any], conn: Any,
                sock: socket.socket) -> None:
    from daemon.embedded import die_with_parent

    preexec = die_with_parent(parent)
    if preexec is not None:
        preexec()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's to handle
    logging.basicConfig(level=settings.log_level.upper(), format=(
        "%(asctime)s %(levelname)s %(name)s [server]: %(message)s"))
    logging.getLogger("kafka").setLevel(logging.WARNING)
    link = Link(conn)
    try:
        import torch
        import uvicorn
        from threadpoolctl import threadpool_limits

        from daemon.api import create_app
        from daemon.service import freeze_heap

        torch.set_num_threads(1)
        threadpool_limits(1)
        # The event loop answers requests and must get the GIL back at once from the
        # maintenance and link threads (each Redis reply re-acquires it): 1 ms, not 5.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        node = ServingNode(settings, link, spec)
        node.serving.candidates.refresh()  # a feed at the first request, not 0.5 s later
        server = uvicorn.Server(uvicorn.Config(
            create_app(node), log_level="warning", access_log=False,
            timeout_graceful_shutdown=2))
    except Exception as e:
        logging.getLogger(__name__).exception("the serving process could not start")
        link.send("failed", f"{type(e).__name__}: {e}")
        return
    threads = [threading.Thread(target=node.listen, name="link", daemon=True),
               threading.Thread(target=node.maintain, name="maintenance", daemon=True),
               threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http",
                                daemon=True)]
    for thread in threads:
        thread.start()
    while not server.started and threads[2].is_alive():
        time.sleep(0.01)
    freeze_heap()
    link.send("ready", os.getpid())
    while not node.stop_event.wait(0.5):
        if os.getppid() != parent or not threads[2].is_alive():
            break
    server.should_exit = True
    threads[2].join(5.0)

