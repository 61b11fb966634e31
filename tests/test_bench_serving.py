"""The serving benchmark: its load generator (scripts/loadgen.py: schedule, latency from schedule,
percentiles, the HTTP client and its process against a tiny in-process asyncio server) and its
CPU and daemon accounting (scripts/bench_serving.py). No daemon, no network beyond loopback."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_serving as bs  # noqa: E402
import loadgen as lg  # noqa: E402


@pytest.mark.parametrize("kind", ["poisson", "uniform"])
def test_arrivals_have_the_rate_and_stay_in_the_window(kind: str) -> None:
    t = lg.arrival_times(200.0, 50.0, kind, np.random.default_rng(1))
    assert abs(len(t) - 10_000) < 4 * np.sqrt(10_000)
    assert t.min() >= 0 and t.max() < 50.0 and np.all(np.diff(t) >= 0)


def test_poisson_gaps_are_exponential_and_uniform_gaps_fixed() -> None:
    gaps = np.diff(lg.arrival_times(100.0, 200.0, "poisson", np.random.default_rng(2)))
    assert abs(gaps.mean() - 0.01) < 0.0005
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05  # coefficient of variation 1
    gaps = np.diff(lg.arrival_times(100.0, 10.0, "uniform", np.random.default_rng(2)))
    assert np.allclose(gaps, 0.01)


def test_schedule_merges_the_routes_in_order_and_is_seeded() -> None:
    times, routes = lg.schedule({"suggest": 50.0, "feed": 150.0}, 20.0, "poisson", 7)
    assert np.all(np.diff(times) >= 0)
    n_suggest, n_feed = int((routes == 0).sum()), int((routes == 1).sum())
    assert abs(n_suggest - 1000) < 150 and abs(n_feed - 3000) < 250
    again = lg.schedule({"suggest": 50.0, "feed": 150.0}, 20.0, "poisson", 7)
    assert np.array_equal(times, again[0]) and np.array_equal(routes, again[1])
    with pytest.raises(ValueError, match="arrivals"):
        lg.arrival_times(1.0, 1.0, "bursty", np.random.default_rng(0))


def test_summary_counts_the_window_only_and_failures_in_the_percentiles() -> None:
    times = np.arange(100) * 0.1  # 10 s at 10/s; the window is [2, 8)
    latency = np.full(100, 0.010)
    latency[50] = 10.0  # a timed-out request counts at the timeout
    status = np.full(100, 200, np.int16)
    status[50], status[51], status[52] = lg.TIMED_OUT, lg.CONN_ERROR, 503
    status[0] = 500  # in the warm-up: not counted
    lag = np.full(100, 0.001)
    lag[50] = np.nan  # never written
    s = lg.summarize(times, latency, lag, status, 2.0, 8.0)
    assert s["requests"] == 60 and s["ok"] == 57 and s["errors"] == 3
    assert s["error_kinds"] == {"timeout": 1, "connection": 1, "http": 1}
    assert s["p50_ms"] == pytest.approx(10.0) and s["max_ms"] == pytest.approx(10_000.0)
    assert s["send_lag_max_ms"] == pytest.approx(1.0)
    assert s["achieved_rps"] == pytest.approx(9.5)


def test_summarize_routes_splits_by_route_index() -> None:
    times, routes = np.arange(10) * 1.0, np.array([0, 1] * 5, np.int8)
    arrays = {"times": times, "routes": routes, "latency": np.where(routes == 0, 0.01, 0.02),
              "lag": np.zeros(10), "status": np.full(10, 200, np.int16)}
    out = lg.summarize_routes(arrays, 0.0, 10.0)
    assert list(out) == list(lg.ROUTES)
    assert out["suggest"]["p50_ms"] == pytest.approx(10.0)
    assert out["feed"]["p50_ms"] == pytest.approx(20.0) and out["feed"]["requests"] == 5


def test_cpu_per_s_leaves_the_rest_of_the_machine_as_other() -> None:
    a = {"generator": 1.0, "daemon": 10.0, "machine": 100.0}
    b = {"generator": 2.0, "daemon": 20.0, "machine": 130.0}
    out = bs.cpu_per_s(a, b, 10.0)
    assert out == {"generator": 0.1, "daemon": 1.0, "machine": 3.0, "other": 1.9}


def test_cpu_snapshot_sees_this_process() -> None:
    import os

    before = bs.cpu_snapshot({"me": os.getpid()})
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    after = bs.cpu_snapshot({"me": os.getpid()})
    assert after["me"] - before["me"] >= 0.03 and after["machine"] >= before["machine"]


def test_drain_waits_for_the_daemon_to_finish_or_stop_moving() -> None:
    counts = iter([10, 12, 15, 20, 20])
    assert bs.drain(lambda: next(counts), 20, still_s=0.2) < 3
    stuck = iter([10, 12] + [13] * 100)  # some abandoned requests never finish
    assert 0.5 <= bs.drain(lambda: next(stuck), 20, still_s=0.4) < 3
    assert bs.drain(lambda: 5, 5) == 0.0


def test_api_requests_counts_the_two_routes_only() -> None:
    name = "tagspace_api_request_seconds_count"
    samples = {(name, (("route", "/v1/suggest"), ("status", "200"))): 3.0,
               (name, (("route", "/v1/suggest"), ("status", "422"))): 1.0,
               (name, (("route", "/v1/feed/{user_id}"), ("status", "200"))): 5.0,
               (name, (("route", "/metrics"), ("status", "200"))): 9.0}
    assert bs.api_requests(samples) == 9.0


async def _slow_server(delays: dict[bytes, float]) -> tuple[asyncio.Server, int]:
    """HTTP/1.1 keep-alive server: answers each request after delays[path] seconds, one at a
    time per connection (as uvicorn does); /close answers with Connection: close."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1]
                i = head.lower().find(b"content-length:")
                if i >= 0:
                    await reader.readexactly(int(head[i + 15:head.index(b"\r\n", i)]))
                await asyncio.sleep(delays.get(path.split(b"?")[0], 0.0))
                body = b'{"items":[],"cold_start":true}'
                close = path == b"/close"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
                    len(body), b"Connection: close\r\n" if close else b"", body))
                if close:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _spec(port: int, rate: float, seconds: float, **kw: object) -> dict:
    spec = {"host": "127.0.0.1", "port": port, "t0": time.monotonic() + 0.1, "warmup": 0.0,
            "duration": seconds, "rates": {"suggest": rate, "feed": rate},
            "arrivals": "uniform", "seed": 0, "timeout": 5.0, "max_connections": 64,
            "preconnect": 2, "suggest_bodies": ['{"text": "a"}'], "feed_paths": ["/v1/feed/u"]}
    spec.update(kw)
    return spec


def test_open_loop_latency_runs_from_the_schedule_when_connections_run_out() -> None:
    """Server time 50 ms, one connection, 20 req/s per route (40 in all: twice what one
    connection serves): a closed-loop client would see 50 ms; from the schedule the queue shows
    and grows, and the requests still all leave."""

    async def main() -> tuple[dict, dict]:
        server, port = await _slow_server({b"/v1/suggest": 0.05, b"/v1/feed/u": 0.05})
        async with server:
            return await lg.generate(_spec(port, 20.0, 1.0, max_connections=1, preconnect=1))

    arrays, meta = asyncio.run(main())
    assert (arrays["status"] == 200).all() and len(arrays["status"]) == 40
    assert meta["peak_connections"] == 1
    latency = arrays["latency"][np.argsort(arrays["times"])]
    assert latency[0] < 0.1 and latency[-1] > 0.9  # 40 x 50 ms of work offered in 1 s
    assert arrays["cold"][arrays["routes"] == 1].all()


def test_open_loop_opens_connections_for_requests_in_flight() -> None:
    async def main() -> tuple[dict, dict]:
        server, port = await _slow_server({b"/v1/suggest": 0.2, b"/v1/feed/u": 0.2})
        async with server:
            return await lg.generate(_spec(port, 50.0, 1.0))

    arrays, meta = asyncio.run(main())
    assert (arrays["status"] == 200).all()
    assert meta["peak_connections"] >= 15  # 100 req/s x 0.2 s in flight
    assert np.nanmax(arrays["latency"]) < 0.5 and np.nanmax(arrays["lag"]) < 0.1


def test_timeouts_and_closed_connections() -> None:
    async def main() -> tuple[dict, dict]:
        server, port = await _slow_server({b"/v1/suggest": 3.0, b"/close": 0.0})
        async with server:
            return await lg.generate(_spec(port, 10.0, 0.5, timeout=0.3,
                                           feed_paths=["/close"]))

    arrays, meta = asyncio.run(main())
    suggest, feed = arrays["routes"] == 0, arrays["routes"] == 1
    assert (arrays["status"][suggest] == lg.TIMED_OUT).all()
    assert np.allclose(arrays["latency"][suggest], 0.3)
    assert (arrays["status"][feed] == 200).all()  # each on a new connection


def test_the_generator_runs_in_its_own_process(tmp_path: Path) -> None:
    """start() runs scripts/loadgen.py on a spec; read_result() reads back what it left."""

    async def main() -> tuple[dict, dict]:
        server, port = await _slow_server({})
        async with server:
            gen = lg.start(_spec(port, 10.0, 0.3, t0=time.monotonic() + 2.0),
                           tmp_path / "gen.json", tmp_path / "gen.npz")
            printed = (await asyncio.to_thread(gen.communicate, timeout=60))[0]
            assert gen.returncode == 0
            return lg.read_result(tmp_path / "gen.npz", printed)

    arrays, meta = asyncio.run(main())
    assert len(arrays["status"]) >= 4 and (arrays["status"] == 200).all()
    assert meta["connections_opened"] >= 2 and "nice" in meta
