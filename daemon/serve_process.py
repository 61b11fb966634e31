"""The HTTP API in child processes of its own: serving never shares a GIL with ingestion.

The daemon's process keeps the Kafka consumer, the vocabularies' owner, the checkpoints and the
training process; ``serve_processes`` children answer every route. Each serves with the
daemon's weights in shared memory and replicas of its vocabularies (``daemon.model_mirror``),
reads Redis itself, keeps its own feed candidates, and freezes its start-up heap, so no
collection of it ever stops a request. Re-embedding stale posts (reading their tokens, the CNN,
writing back) is the daemon's work: the first child chooses the posts and asks, every child
applies the new vectors to its candidates.

One pipe joins the daemon to each child. The daemon sends the admissions of new words and tags
and each new model version a few milliseconds after they happen; a child asks the daemon for
what only the daemon knows (readiness, a checkpoint, re-embedding) and reports its metrics every
second and with each ``/metrics`` it answers, for the daemon to merge into one exposition. The
listening socket is the daemon's: bound before the children start (a port in use fails start-up
at once), inherited by each, which accept from it in turn (the kernel spreads connections).

Faults: a child that dies is started again (``tagspace_server_restarts_total``) on the same
socket, so connections wait in its backlog, or go to the others, for the seconds a start takes;
its last metrics stay in the sums; all die with the daemon (``PR_SET_PDEATHSIG``). The serve
role's children load the published versions themselves, as the daemon's process does for
ingestion.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import Future
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

import torch.multiprocessing as mp
from prometheus_client.metrics_core import Metric

from daemon.config import Settings, host_port
from daemon.in_flight import InFlight
from daemon.metrics import merge_families
from daemon.serving import reembed_posts

if TYPE_CHECKING:
    from daemon.service import Daemon

log = logging.getLogger(__name__)
PUBLISH_EVERY_S = 0.005  # admissions reach the server at most this late (plus the pipe)
START_TIMEOUT_S = 120.0  # a child imports torch and loads candidates before it answers
RESTART_BACKOFF_S = 1.0
CALL_TIMEOUT_S = 30.0  # a checkpoint can take seconds
REPORT_EVERY_S = 1.0  # a serving process's metrics reach the others' /metrics this late


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


class _Child:
    """One serving process, seen from the daemon."""

    def __init__(self, index: int, proc: Any, link: Link):
        self.index, self.proc, self.link = index, proc, link
        self.families: list[Metric] = []  # its metrics, as it last reported them


class ServingProcess:
    """The daemon's side: starts ``count`` children on the daemon's socket (the kernel hands
    each connection to one of them), feeds them the vocabulary admissions and versions, answers
    their calls, merges their metrics, and starts any that dies again."""

    def __init__(self, daemon: Daemon, count: int = 1):
        self.daemon = daemon
        self.settings = daemon.settings
        self.count = count
        self._ctx = mp.get_context("spawn")
        self._sock: socket.socket | None = None
        self._children: list[_Child] = []
        self._retired: list[Metric] = []  # the last metrics of children that died: kept
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent_version = -1

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children]

    @property
    def pid(self) -> int | None:
        return self.pids[0] if self._children else None

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
        self._sent_version = self.daemon.hub.version
        self._children = [self._spawn(i) for i in range(self.count)]
        self._thread = threading.Thread(target=self._run, name="serve-link", daemon=True)
        self._thread.start()

    def _spawn(self, index: int) -> _Child:
        d = self.daemon
        parent_end, child_end = self._ctx.Pipe()
        spec: dict[str, Any] = {"version": d.hub.version, "version_time": d.hub.version_time}
        if self.settings.role != "serve":  # the live model: shared weights, replicas
            from daemon.shared_model import share

            spec["shared"] = share(d.hub.online)
            spec["words"], spec["tags"] = d.hub.online.replicas()
            spec["personalize"] = (d.hub.personalizer.weights, d.hub.personalizer.bow)
        spec["reembeds"] = index == 0  # one chooses the stale posts; all get the results
        spec["slot"] = index  # its count of requests in flight (daemon.in_flight)
        proc = self._ctx.Process(
            target=_child_main, name=f"tagspace-server-{index}", daemon=True,
            args=(os.getpid(), self.settings, spec, child_end, self._sock))
        proc.start()
        child_end.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if parent_end.poll(0.1):
                message = parent_end.recv()
                if message[0] == "ready":
                    log.info("serving process %d answers on http://%s", proc.pid,
                             self.settings.http_addr)
                    return _Child(index, proc, Link(parent_end))
                if message[0] == "failed":
                    raise RuntimeError(f"the serving process could not start: {message[1]}")
            elif not proc.is_alive():
                raise RuntimeError(f"the serving process exited at start "
                                   f"(code {proc.exitcode})")
        proc.kill()
        raise RuntimeError(f"the serving process did not start within {START_TIMEOUT_S:g} s")

    def _run(self) -> None:
        """Publish admissions and versions, answer calls, restart dead children."""
        while not self._stopping.is_set():
            children = list(self._children)
            by_conn = {c.link.conn: c for c in children}
            dead: list[_Child] = []
            for ready in wait(list(by_conn), timeout=PUBLISH_EVERY_S):
                child = by_conn[ready]
                try:
                    while child.link.conn.poll():
                        self._handle(child, child.link.conn.recv())
                except (EOFError, OSError):
                    dead.append(child)
            dead += [c for c in children if c not in dead and not c.proc.is_alive()]
            self._publish([c for c in children if c not in dead])
            if self._stopping.is_set():
                return
            for child in dead:
                self._restart(child)

    def _handle(self, child: _Child, message: tuple) -> None:
        if message[0] == "families":
            child.families = message[1]
        elif message[0] == "call":
            _, call_id, name, payload = message
            threading.Thread(target=self._answer, args=(child, call_id, name, payload),
                             name=f"serve-call-{name}", daemon=True).start()

    def _answer(self, child: _Child, call_id: int, name: str, payload: Any) -> None:
        d = self.daemon
        try:
            if name == "metrics":
                child.families = payload  # the caller's, fresh; the others' as last reported
                value: Any = d.exposition(self.families())
            elif name == "ready":
                value = d.readiness_problems()
            elif name == "reembed":  # background work: below serving for the CPU
                _lower_this_threads_priority()
                value = reembed_posts(d.hub, d.store, payload)
                for other in list(self._children):  # their candidates too
                    if other is not child:
                        try:
                            other.link.send("reembedded", value)
                        except (OSError, BrokenPipeError):
                            pass
            elif name == "checkpoint":
                ok = d.checkpoint()
                value = (ok, d.hub.version, d.hub.version_time)
            else:
                value = None
        except Exception:  # the child gets None; the daemon logs why
            log.exception("answering the serving process's %s failed", name)
            value = None
        try:
            child.link.send("reply", call_id, value)
        except (OSError, BrokenPipeError):
            pass

    def families(self) -> list[Metric]:
        """Every serving process's metrics, merged (those that died included)."""
        merged = list(self._retired)
        for child in list(self._children):
            merged = merge_families(merged, child.families)
        return merged

    def _publish(self, children: list[_Child]) -> None:
        hub = self.daemon.hub
        words, tags = hub.online.take_admissions()
        version = hub.version
        if words or tags or version != self._sent_version:
            for child in children:
                try:
                    child.link.send("model", words, tags, version, hub.version_time)
                except (OSError, BrokenPipeError):
                    pass  # found dead on the next round
            self._sent_version = version

    def _restart(self, child: _Child) -> None:
        log.error("serving process %d exited (code %s): starting it again", child.proc.pid,
                  child.proc.exitcode)
        self.daemon.metrics.server_restarts.inc()
        self._retired = merge_families(self._retired, child.families)  # counters carry on
        child.families = []
        while not self._stopping.wait(RESTART_BACKOFF_S):
            try:
                fresh = self._spawn(child.index)
            except Exception:
                log.exception("restarting the serving process failed")
                continue
            self._children[child.index] = fresh
            return

    def request_stop(self) -> None:
        """Stop answering: requests in flight finish (within the HTTP grace period)."""
        self._stopping.set()
        for child in self._children:
            try:
                child.link.send("stop")
            except (OSError, BrokenPipeError):
                pass

    def join(self, timeout: float = 3.0) -> None:
        """Wait for the children to exit (killed past ``timeout``); the socket closed."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for child in self._children:
            child.proc.join(max(0.1, deadline - time.monotonic()))
            if child.proc.is_alive():
                child.proc.kill()
                child.proc.join(1.0)
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
        self.reembeds = bool(spec.get("reembeds", True))
        self.in_flight = InFlight(spec["shared"]["in_flight"].numpy() if "shared" in spec
                                  else None, spec.get("slot", 0))
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
            elif kind == "reembedded":
                try:
                    self.serving.apply_reembedded(message[1])
                except Exception:  # stale vectors stay; never lose the link over them
                    log.exception("applying re-embedded posts failed")
            elif kind == "reply":
                self.link.resolve(message[1], message[2])
            elif kind == "stop":
                self.stop_event.set()
                return

    def maintain(self) -> None:
        """New candidates and re-embedding; the serve role's version reloads."""
        import redis

        s = self.settings
        last_reload = last_report = time.monotonic()
        while not self.stop_event.wait(s.candidate_refresh_s):
            if time.monotonic() - last_report >= REPORT_EVERY_S:
                last_report = time.monotonic()
                try:  # for the /metrics that the other serving processes answer
                    self.link.send("families", list(self.metrics.registry.collect()))
                except (OSError, BrokenPipeError):
                    return
            if self.mirror is None and time.monotonic() - last_reload >= s.reload_interval_s:
                last_reload = time.monotonic()
                self.hub.try_reload()
            try:
                self.serving.maintain(reembeds=self.reembeds)
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
    _set_priority(settings.serve_nice)  # before any thread starts: they inherit it
    logging.getLogger("kafka").setLevel(logging.WARNING)
    link = Link(conn)
    try:
        import torch
        import uvicorn
        from threadpoolctl import threadpool_limits

        from daemon.api import create_app
        from daemon.heap import freeze_heap
        from daemon.http_server import server_config

        torch.set_num_threads(1)
        threadpool_limits(1)
        node = ServingNode(settings, link, spec)
        node.serving.candidates.refresh()  # a feed at the first request, not 0.5 s later
        server = uvicorn.Server(server_config(create_app(node), settings, node.metrics))
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



def _set_priority(niceness: int) -> None:
    """Every thread of this process at ``niceness``, and so the threads it starts later (they
    inherit it; the ones already running, started while the spawn unpickled, are set by their
    ids). Priority is what keeps serving ahead of the rest of a busy machine (docs/DAEMON.md,
    docs/PERFORMANCE.md). All threads at one value: a request thread waiting for the GIL held
    by a lower-priority maintenance thread would wait for that thread's CPU too."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the calling thread only
        tids = [threading.get_native_id()]
    try:
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
            except ProcessLookupError:  # a thread that ended meanwhile
                pass
    except (AttributeError, OSError) as e:
        log.warning("serving process %d not at serve_nice %d (%s; below 0 needs root or "
                    "CAP_SYS_NICE)", os.getpid(), niceness, e)


def _lower_this_threads_priority(niceness: int = 10) -> None:
    """Linux: a nice value for the calling thread only (its native id), so that the daemon
    process's background work yields the CPU to the serving processes."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass
