#!/usr/bin/env python
"""The open-loop HTTP load generator of bench_serving.py: schedule, client, latency, summary.

Open loop: every request's send time is drawn up front (`schedule`: Poisson arrivals, i.e.
exponential gaps, or a fixed step), and a request leaves at its time whether or not earlier ones
have been answered. A closed-loop client (wrk or hey, Debian's: a connection sends its next
request only after the previous answer; hey's -q paces each worker, not the arrivals) lowers the
offered load when the server slows down and so hides its queue; here the load stays as offered.
Latency runs from the *scheduled* time to the last byte of the response, so a server (or
generator) that falls behind shows as latency, not as fewer requests (no coordinated omission).
The send lag (scheduled -> written) is kept beside it to tell the generator's own delays apart.
A request not answered within the timeout of its scheduled time is an error and enters the
percentiles at the timeout (a lower bound).

The client is one asyncio event loop with asyncio streams, prebuilt request bytes and a pool of
keep-alive connections that grows while requests are in flight, one request per connection at a
time (pipelining would add the client's own head-of-line blocking). wrk2, the open-loop fork of
wrk, is not packaged (vegeta, open loop, would be a Go build). Python costs it CPU (about 200 us
a request, most of it the kernel's socket calls), which bench_serving.py measures and reports.

It runs in its own process (`start`; stdlib and numpy only), at nice -10 when allowed, so that
its wake-ups are not queued behind the server's threads and counted as the server's latency:
`python loadgen.py SPEC.json OUT.npz` sends the schedule of the spec (see `generate`), writes
the per-request arrays to OUT.npz and prints one JSON line of counters (`read_result`).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

ROUTES = ("suggest", "feed")  # a request's route is its index here
TIMED_OUT, CONN_ERROR = -1, 0  # statuses besides HTTP's
GENERATOR_NICE = -10
IDLE_S = 4.0  # a pooled connection idle longer is dropped (uvicorn closes them after 5 s)


# --- the schedule and its statistics (pure) -------------------------------------------------

def arrival_times(rate: float, seconds: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Send times in [0, seconds) of one stream of requests at ``rate`` per second."""
    if rate <= 0 or seconds <= 0:
        return np.empty(0)
    if kind == "uniform":  # a fixed step, with a random phase so two routes do not collide
        return np.arange(rng.uniform(0, 1 / rate), seconds, 1 / rate)
    if kind != "poisson":
        raise ValueError(f"unknown arrivals {kind!r}: poisson or uniform")
    n = int(rate * seconds + 5 * np.sqrt(rate * seconds)) + 10
    t = np.cumsum(rng.exponential(1 / rate, n))
    while t[-1] < seconds:
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1 / rate, n))])
    return t[t < seconds]


def schedule(rates: dict[str, float], seconds: float, kind: str,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(send times, route index into ROUTES) of every request, in time order."""
    rng = np.random.default_rng(seed)
    parts = [arrival_times(rates.get(r, 0.0), seconds, kind, rng) for r in ROUTES]
    times = np.concatenate(parts)
    routes = np.concatenate([np.full(len(p), i, np.int8) for i, p in enumerate(parts)])
    order = np.argsort(times, kind="stable")
    return times[order], routes[order]


def summarize(times: np.ndarray, latency: np.ndarray, lag: np.ndarray, status: np.ndarray,
              start: float, end: float) -> dict:
    """One route's requests scheduled in [start, end): latency from schedule (all requests,
    failed ones included), errors by kind, send lag (of the requests written)."""
    from bench_daemon import pct  # in the parent only: the generator process stays light

    m = (times >= start) & (times < end)
    ms, st, sent = latency[m] * 1e3, status[m], lag[m][np.isfinite(lag[m])] * 1e3
    kinds = {"timeout": int((st == TIMED_OUT).sum()), "connection": int((st == CONN_ERROR).sum()),
             "http": int(((st > 0) & (st != 200)).sum())}
    out = {"requests": int(m.sum()), "ok": int((st == 200).sum()), "errors": sum(kinds.values()),
           "error_kinds": kinds, "scheduled_rps": round(float(m.sum()) / (end - start), 1),
           "achieved_rps": round(float((st == 200).sum()) / (end - start), 1)}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9), ("max", 100)):
        out[f"{name}_ms"] = pct(ms.tolist(), q)
    for name, q in (("p50", 50), ("p99", 99), ("max", 100)):
        out[f"send_lag_{name}_ms"] = pct(sent.tolist(), q)
    # per second of the window: where the tail comes from (spread out, or a few stalls)
    second = np.floor(times[m] - start).astype(int)
    out["per_second_max_ms"] = [round(float(ms[second == i].max()), 1) if (second == i).any()
                                else None for i in range(int(np.ceil(end - start)))]
    return out


def summarize_routes(arrays: dict[str, np.ndarray], start: float,
                     end: float) -> dict[str, dict]:
    """``summarize`` of each route of ``generate``'s arrays, over the window [start, end)."""
    out = {}
    for i, route in enumerate(ROUTES):
        m = arrays["routes"] == i
        out[route] = summarize(arrays["times"][m], arrays["latency"][m], arrays["lag"][m],
                               arrays["status"][m], start, end)
    return out


# --- the client (asyncio streams, raw keep-alive HTTP/1.1) ----------------------------------

class Pool:
    """Keep-alive connections to one server, one request at a time on each, opened on demand up
    to ``limit``; beyond it a request waits for a connection (the wait counts as latency)."""

    def __init__(self, host: str, port: int, limit: int):
        self.host, self.port, self.limit = host, port, limit
        self.loop = asyncio.get_running_loop()
        self.idle: list[tuple[Any, Any, float]] = []  # a stack: hot connections are reused
        self.waiters: deque[asyncio.Future] = deque()
        self.size = self.opened = self.peak = 0

    async def get(self) -> tuple[Any, Any, bool]:
        """(reader, writer, reused)."""
        now = self.loop.time()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if now - since < IDLE_S and not reader.at_eof() and not writer.is_closing():
                return reader, writer, True
            self.drop(writer)
        if self.size >= self.limit:
            fut = self.loop.create_future()
            self.waiters.append(fut)
            try:
                got = await fut  # a connection, or None: a slot was freed, open one
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():  # handed over as the timeout fired
                    got = fut.result()
                    if got:
                        self.put(got[0], got[1])
                    else:
                        self.release()
                raise
            if got is not None:
                return got
        else:
            self.size += 1
            self.peak = max(self.peak, self.size)
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except BaseException:
            self.release()
            raise
        self.opened += 1
        return reader, writer, False

    def put(self, reader: Any, writer: Any) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result((reader, writer, True))
                return
        self.idle.append((reader, writer, self.loop.time()))

    def drop(self, writer: Any) -> None:
        writer.close()
        self.release()

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.size -= 1


async def exchange(reader: Any, writer: Any, request: bytes) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 request and its response: (status, body, keep-alive)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status, h = int(head[9:12]), head.lower()
    i = h.find(b"\r\ncontent-length:")
    if i >= 0:
        body = await reader.readexactly(int(h[i + 17:h.index(b"\r\n", i + 2)]))
    elif b"transfer-encoding: chunked" in h:
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")
        body = b"".join(chunks)
    else:
        raise ConnectionError("a response without a length")
    return status, body, b"\r\nconnection: close" not in h


def http_requests(host: str, port: int, bodies: list[str], paths: list[str],
                  token: str = "") -> tuple[list[bytes], list[bytes]]:
    """The prebuilt bytes of every distinct suggest and feed request."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    suggest = []
    for body in bodies:
        data = body.encode()
        suggest.append(f"POST /v1/suggest HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}Content-Type: "
                       f"application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    feed = [f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode() for p in paths]
    return suggest, feed


async def generate(spec: dict) -> tuple[dict[str, np.ndarray], dict]:
    """Send the whole schedule of ``spec``; per request: latency from schedule, send lag,
    status, whether a feed answered cold start.

    ``spec``: host, port, token (optional); t0 (the loop's clock, i.e. time.monotonic(), of
    schedule time 0), warmup + duration (seconds scheduled), rates (req/s by route), arrivals,
    seed; timeout (seconds from the scheduled time); max_connections, preconnect (opened before
    t0); suggest_bodies and feed_paths (the requests, taken in turn)."""
    loop = asyncio.get_running_loop()
    sched_times, sched_routes = schedule(spec["rates"], spec["warmup"] + spec["duration"],
                                         spec["arrivals"], spec["seed"])
    times, routes = sched_times.tolist(), sched_routes.tolist()  # floats and ints, fast to index
    n = len(times)
    latency, lag = np.full(n, np.nan), np.full(n, np.nan)
    status, cold = np.zeros(n, np.int16), np.zeros(n, bool)
    reqs = http_requests(spec["host"], spec["port"], spec["suggest_bodies"], spec["feed_paths"],
                         spec.get("token", ""))
    pool = Pool(spec["host"], spec["port"], spec["max_connections"])
    t0, timeout = spec["t0"], spec["timeout"]

    async def one(i: int) -> None:
        kinds = reqs[routes[i]]
        request, sched = kinds[i % len(kinds)], t0 + times[i]
        try:
            async with asyncio.timeout_at(sched + timeout):
                for attempt in (0, 1):
                    reader, writer, reused = await pool.get()
                    if attempt == 0:
                        lag[i] = loop.time() - sched
                    try:
                        code, body, keep = await exchange(reader, writer, request)
                        break
                    except asyncio.IncompleteReadError as e:
                        pool.drop(writer)
                        if reused and attempt == 0 and not e.partial:
                            continue  # the server closed an idle connection: once more, anew
                        raise
                    except BaseException:
                        pool.drop(writer)
                        raise
            latency[i], status[i] = loop.time() - sched, code
            cold[i] = b'"cold_start":true' in body or b'"cold_start": true' in body
            if keep:
                pool.put(reader, writer)
            else:
                pool.drop(writer)
        except TimeoutError:
            latency[i], status[i] = timeout, TIMED_OUT
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            latency[i], status[i] = loop.time() - sched, CONN_ERROR

    warm = [await pool.get() for _ in range(spec["preconnect"])]
    for reader, writer, _ in warm:
        pool.put(reader, writer)
    tasks: set[asyncio.Task] = set()
    in_flight = 0
    for i in range(n):
        delay = t0 + times[i] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        in_flight = max(in_flight, len(tasks))
    if tasks:
        await asyncio.wait(tasks)
    for _, writer, _ in pool.idle:
        writer.close()
    arrays = {"times": sched_times, "routes": sched_routes, "latency": latency, "lag": lag,
              "status": status, "cold": cold}
    return arrays, {"connections_opened": pool.opened, "peak_connections": pool.peak,
                    "peak_in_flight": in_flight}


# --- the generator's process ------------------------------------------------------------------

def start(spec: dict, spec_path: Path, out_path: Path) -> subprocess.Popen:
    """The generator in a process of its own, sending ``spec`` (written to ``spec_path``); its
    arrays go to ``out_path``, its counters to its stdout (a pipe)."""
    spec_path.write_text(json.dumps(spec))
    return subprocess.Popen([sys.executable, __file__, str(spec_path), str(out_path)],
                            stdout=subprocess.PIPE, text=True)


def read_result(out_path: Path, printed: str) -> tuple[dict[str, np.ndarray], dict]:
    """What a finished generator left: ``generate``'s arrays and its counters (with its nice)."""
    with np.load(out_path) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(printed)


def main(argv: list[str]) -> None:
    spec_path, out_path = argv
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:  # woken ahead of the daemon's threads, so our scheduling delays do not read as its latency
        os.setpriority(os.PRIO_PROCESS, 0, GENERATOR_NICE)
    except OSError:  # not allowed: it stays at the default priority (its nice is reported)
        pass
    spec = json.loads(Path(spec_path).read_text())
    arrays, meta = asyncio.run(generate(spec))
    np.savez(out_path, **arrays)  # type: ignore[arg-type]
    print(json.dumps({**meta, "nice": os.getpriority(os.PRIO_PROCESS, 0)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
