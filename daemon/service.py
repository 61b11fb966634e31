"""The daemon: wires settings, Redis, the model, training, ingestion, serving and its lifecycle.

Threads: one Kafka ingestion loop, one maintenance loop (feed candidates, checkpoints,
re-embedding), the HTTP server; the ``workers`` Hogwild trainers run in a child process at idle
CPU priority over the model's shared memory (``daemon.train_process``), so that they never take
the CPU or the GIL from serving and ingestion. SIGTERM or SIGINT: stop polling, finish
and commit the batch in hand, write a final checkpoint, close, exit 0; a second signal exits at
once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable

import redis
import torch
import uvicorn
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from threadpoolctl import threadpool_limits

from daemon.api import create_app
from daemon.candidates import CandidateIndex
from daemon.config import Settings, host_port
from daemon.feed import FeedRanker
from daemon.heap import freeze_heap
from daemon.http_server import server_config
from daemon.in_flight import InFlight
from daemon.ingest import Ingestor
from daemon.metrics import Exposition, Metrics, merge_families
from daemon.model_hub import ModelDiverged, ModelHub, train_config
from daemon.scorer import Scorer
from daemon.serve_process import ServingProcess
from daemon.serving import Serving, connect_store
from daemon.train_process import TrainingProcess
from daemon.trainer import OnlineTrainer, Trainer

log = logging.getLogger("tagspace.daemon")


class Daemon:
    def __init__(self, settings: Settings,
                 after_ingest: Callable[[float], None] | None = None):
        """``after_ingest(budget_s)`` runs at shutdown once ingestion has committed its last
        batch (the embedded broker spills what it holds there)."""
        s = self.settings = settings
        self.after_ingest = after_ingest
        torch.set_num_threads(1)  # many request and worker threads: one core each, no spinning
        threadpool_limits(1)  # and numpy's BLAS likewise: its own threads spin against ours
        self.metrics = Metrics()
        self.store = connect_store(s, self.metrics)
        self.redis = self.store.r
        self.hub = ModelHub.from_settings(s, self.metrics)
        train = train_config(s)
        self.trainer: Trainer | None = None
        if s.trains and s.train_process:
            self.trainer = TrainingProcess(self.hub.online, self.metrics, s.workers,
                                           s.batch_size, s.train_queue, train,
                                           yield_max_s=s.train_yield_max_s,
                                           publish_s=s.train_publish_s)
        elif s.trains:
            self.trainer = OnlineTrainer(self.hub.online, self.metrics, s.workers,
                                         s.batch_size, s.train_queue)
        # the HTTP API: a serving process of its own, or threads of this one
        self.server = ServingProcess(self, s.serve_processes) \
            if s.serve_process and s.role != "trainer" else None
        self.serving = Serving(s, self.store, self.hub, self.metrics) \
            if self.server is None else None
        shared = getattr(self.hub.online, "_shared", None)  # with a training process
        self.in_flight = InFlight(shared["in_flight"].numpy() if shared else None, 0)
        self.redis_ok = False
        self.ingestor = Ingestor(s, self.store, self.hub, self.trainer, self.metrics,
                                 on_redis_state=self._set_redis_state)
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._http: uvicorn.Server | None = None
        self._kafka_probe = (0.0, False)
        self.app = create_app(self) if self.serving is not None else None

    # the in-process serving parts (daemon.api's Backend; tests read them)
    @property
    def scorer(self) -> Scorer:
        return self._serving().scorer

    @property
    def feeds(self) -> FeedRanker:
        return self._serving().feeds

    @property
    def candidates(self) -> CandidateIndex:
        return self._serving().candidates

    @property
    def trains(self) -> bool:
        return self.settings.trains

    def _serving(self) -> Serving:
        if self.serving is None:
            raise AttributeError("the API is served by the serving process (serve_process)")
        return self.serving

    def _set_redis_state(self, ok: bool) -> None:
        self.redis_ok = ok

    # lifecycle
    def start(self) -> None:
        s = self.settings
        self.redis_ok = self.store.ping()
        if self.trainer is not None:
            self.trainer.start()
        if self.server is not None:
            self.server.start()  # a port in use fails here, before anything is consumed
        for name, target in (("ingest", self._ingest), ("maintenance", self._maintain)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.app is not None:
            self._serve_here()
        self.refresh_gauges()
        freeze_heap()
        log.info("serving on http://%s (model version %d, %s); Kafka %s; Redis %s",
                 s.http_addr, self.hub.version, self.hub.source, s.kafka_bootstrap,
                 s.redis_url)

    def _serve_here(self) -> None:
        host, port = host_port(self.settings.http_addr)
        assert self.app is not None
        self._http = uvicorn.Server(server_config(self.app, self.settings, self.metrics,
                                                  host=host, port=port))
        thread = threading.Thread(target=self._http.run, name="http", daemon=True)
        thread.start()
        self._threads.append(thread)
        deadline = time.monotonic() + 10
        while not self._http.started and time.monotonic() < deadline:
            if not thread.is_alive():
                raise RuntimeError(f"the HTTP server could not listen on "
                                   f"{self.settings.http_addr}")
            time.sleep(0.02)

    def _ingest(self) -> None:
        try:
            self.ingestor.run(self.stop_event)
        except Exception:
            log.exception("the ingestion loop failed: stopping")
            self.ingestor.failed = True  # the process exits non-zero: its supervisor restarts it
            self.stop_event.set()

    def _maintain(self) -> None:
        s = self.settings
        last_checkpoint = last_reload = time.monotonic()
        while not self.stop_event.wait(s.candidate_refresh_s):
            if s.role == "serve" and time.monotonic() - last_reload >= s.reload_interval_s:
                last_reload = time.monotonic()
                self.hub.try_reload()
            try:
                if self.serving is not None:
                    self.serving.maintain()
                    self.redis_ok = True
            except redis.RedisError as e:
                self.redis_ok = False
                log.warning("maintenance: Redis unavailable: %s", e)
            except Exception:  # keep checkpointing and refreshing whatever one step did
                log.exception("maintenance step failed")
            if self.trainer is not None and \
                    time.monotonic() - last_checkpoint >= s.checkpoint_interval_s:
                self.checkpoint()
                last_checkpoint = time.monotonic()

    def checkpoint(self) -> bool:
        try:
            path = self.hub.checkpoint()
        except ModelDiverged as e:  # counted by the hub; the last good version keeps serving
            log.error("%s", e)
            return False
        except Exception:  # a full disk must not stop serving
            log.exception("checkpoint failed")
            self.metrics.checkpoints.labels("failed").inc()
            return False
        self.metrics.checkpoints.labels("ok").inc()
        log.info("checkpoint %s (model version %d)", path, self.hub.version)
        return True

    def shutdown(self, budget_s: float = 8.0) -> None:
        """Within ``budget_s``: the batch in hand committed, a final checkpoint, all closed."""
        deadline = time.monotonic() + budget_s
        self.stop_event.set()
        if self._http is not None:
            self._http.should_exit = True
        if self.server is not None:
            self.server.request_stop()  # answers what it holds while ingestion drains
        for thread in self._threads[:2]:  # ingest (finishes and commits), maintenance
            thread.join(max(0.1, deadline - time.monotonic() - 2.0))
        if self.after_ingest is not None:
            try:
                self.after_ingest(max(0.5, min(3.0, deadline - time.monotonic() - 1.5)))
            except Exception:  # the checkpoint and the rest of the stop still happen
                log.exception("stopping the embedded broker failed")
        if self.trainer is not None:
            self.trainer.stop(max(0.1, min(1.0, deadline - time.monotonic() - 1.5)))
            self.checkpoint()
        for thread in self._threads[2:]:
            thread.join(max(0.1, deadline - time.monotonic()))
        if self.server is not None:
            self.server.join(max(0.1, deadline - time.monotonic()))
        self.redis.close()

    def run_until_signalled(self) -> int:
        """Block until SIGTERM/SIGINT, then shut down cleanly (a second signal: exit now)."""
        def on_signal(signum: int, frame: object) -> None:
            if self.stop_event.is_set():
                log.warning("second signal: exiting now")
                os._exit(1)
            log.info("signal %d: draining and stopping", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not self.stop_event.wait(0.5):
            pass
        self.shutdown()
        log.info("stopped")
        return 1 if self.ingestor.failed else 0

    # health and gauges
    def kafka_connected(self) -> bool:
        """A bootstrap server accepts connections (kafka-python has no public "connected"
        call); cached for a second so that probes stay cheap."""
        now = time.monotonic()
        if now - self._kafka_probe[0] > 1.0:
            ok = False
            for server in self.settings.kafka_bootstrap.split(","):
                try:
                    with socket.create_connection(host_port(server), timeout=0.5):
                        ok = True
                        break
                except OSError:
                    continue
            self._kafka_probe = (now, ok)
        return self._kafka_probe[1] and self.ingestor.consumer is not None

    def readiness_problems(self) -> list[str]:
        problems = []
        if not self.kafka_connected():
            problems.append("kafka unreachable")
        if not (self.redis_ok and self.store.ping()):
            problems.append("redis unreachable")
        if self.hub.online is None:
            problems.append("no model")
        return problems

    def exposition(self, theirs: Iterable[Metric] = ()) -> bytes:
        """``/metrics``: this process's metrics, merged with the serving process's."""
        self.refresh_gauges()
        families = merge_families(self.metrics.registry.collect(), theirs)
        return generate_latest(Exposition(families))  # type: ignore[arg-type]

    def refresh_gauges(self) -> None:
        m, online = self.metrics, self.hub.online
        m.model_version.set(self.hub.version)
        m.model_timestamp.set(self.hub.version_time)
        m.model_age.set(time.time() - self.hub.version_time)
        m.vocab.labels("words").set(online.words.size)
        m.vocab.labels("tags").set(online.tags.size)
        m.ready.set(0 if self.readiness_problems() else 1)

