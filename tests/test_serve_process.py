"""The HTTP API in its own process (daemon.serve_process): the daemon's admissions reach it at
once, and a serving process that dies is started again on the same socket."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from daemon.scorer import Scorer
from daemon.service import Daemon
from tests.streams import metric, settings_for, wait_until
from tests.test_online import post

pytestmark = pytest.mark.integration


@pytest.fixture(params=[1, 2], ids=["one", "two"])
def daemon(broker, redis_url, tmp_path, request):
    d = Daemon(settings_for(broker, redis_url, tmp_path / "model", train=False,
                            serve_processes=request.param))
    d.start()
    yield d
    d.shutdown()
    d.store.clear()


def suggested(base: str, text: str) -> list[tuple[str, float]]:
    body = httpx.post(f"{base}/v1/suggest", json={"text": text, "k": 10}).json()
    return [(t["tag"], round(t["score"], 4)) for t in body["tags"]]


def test_the_serving_process_ranks_as_the_daemons_model_and_sees_new_tags_within_1_s(daemon):
    base = f"http://{daemon.settings.http_addr}"
    online = daemon.hub.online
    here = Scorer(daemon.hub, daemon.store)  # the same model, scored in the daemon's process

    def expected(text: str) -> list[tuple[str, float]]:
        return [(t, round(float(sc), 4)) for t, sc, _ in here.suggest(text, 10, None)]
    for i, (text, tag) in enumerate([("goal match team", "football"),
                                     ("oven bake bread", "baking")] * 2):
        online.observe(post(i, text, [tag]), clock=float(i))  # min_tag_count 2: admitted
    query = "violin cello orchestra concert"
    wait_until(lambda: suggested(base, query) == expected(query), 5, "the first tags")
    assert "classical" not in dict(suggested(base, query))
    for i in (10, 11):
        online.observe(post(i, query, ["classical"]), clock=float(i))
    admitted = time.monotonic()
    wait_until(lambda: "classical" in dict(suggested(base, query)), 5,
               "#classical in the serving process", every=0.01)
    took = time.monotonic() - admitted
    assert took < 1.0, f"#classical took {took:.2f} s to reach the serving process"
    time.sleep(0.1)  # every serving process has it by now (each new connection: any of them)
    for _ in range(10):
        assert suggested(base, query) == expected(query)
        assert suggested(base, "oven bake bread") == expected("oven bake bread")


def test_a_killed_serving_process_is_started_again_and_its_counts_are_kept(daemon):
    base = f"http://{daemon.settings.http_addr}"
    for _ in range(20):
        assert httpx.get(f"{base}/livez").status_code == 200
    time.sleep(1.5)  # every serving process has reported its metrics

    def livez_count() -> float:
        return metric(httpx.get(f"{base}/metrics").text, "tagspace_api_request_seconds_count",
                      route="/livez", status="200")
    assert livez_count() == 20  # each process's requests, in one exposition
    first = daemon.server.pid
    os.kill(first, signal.SIGKILL)

    def answering_again() -> bool:
        try:
            return httpx.get(f"{base}/livez", timeout=1).status_code == 200 and \
                first not in daemon.server.pids and len(daemon.server.pids) == \
                daemon.settings.serve_processes
        except httpx.HTTPError:
            return False
    wait_until(answering_again, 60, "a new serving process")
    text = httpx.get(f"{base}/metrics").text
    assert metric(text, "tagspace_server_restarts_total") == 1
    assert livez_count() >= 20  # the dead process's requests still counted
    assert httpx.post(f"{base}/v1/suggest", json={"text": "anything"}).status_code == 200


def test_every_thread_of_the_serving_processes_runs_at_serve_nice(broker, redis_url, tmp_path):
    """A positive value: allowed without privileges, so the test holds for any user."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    d = Daemon(settings_for(broker, redis_url, tmp_path / "model", train=False,
                            serve_processes=2, serve_nice=7))
    d.start()
    try:
        assert httpx.get(f"http://{d.settings.http_addr}/livez").status_code == 200
        for pid in d.server.pids:
            threads = {}
            for tid in os.listdir(f"/proc/{pid}/task"):
                stat = open(f"/proc/{pid}/task/{tid}/stat").read()
                threads[tid] = int(stat.rsplit(")", 1)[1].split()[16])  # field 19: nice
            assert len(threads) > 3 and set(threads.values()) == {7}, threads
        assert os.getpriority(os.PRIO_PROCESS, 0) == ours  # the daemon's own process unchanged
    finally:
        d.shutdown()
        d.store.clear()


def test_the_serving_process_suggests_never_seen_tags_with_open_vocabulary_scorers(
        broker, redis_url, tmp_path):
    """``open_vocab_scorers``: the serving process loads the file and answers what the daemon's
    own scorer answers, a run of the post's words that no model row holds first."""
    from daemon.open_vocab import OpenVocabRanking
    from tagspace.open_vocab import save_scorers
    from tests.test_open_vocab import ilove_scorer

    scorer, _, _ = ilove_scorer()
    save_scorers(tmp_path / "open-vocab", {"content": scorer})
    d = Daemon(settings_for(broker, redis_url, tmp_path / "model", train=False,
                            open_vocab_scorers=str(tmp_path / "open-vocab")))
    d.start()
    try:
        body = httpx.post(f"http://{d.settings.http_addr}/v1/suggest",
                          json={"text": "I love food55", "k": 3}).json()
        assert body["tags"][0]["tag"] == "ilovefood55" and body["tags"][0]["known"] is False
        here = Scorer(d.hub, d.store, OpenVocabRanking.load(tmp_path / "open-vocab")
                      ).suggest("I love food55", 3, None)  # the same, in the daemon's process
        assert [(t["tag"], t["score"], t["known"]) for t in body["tags"]] == \
            [(t, float(p), known) for t, p, known in here]
    finally:
        d.shutdown()
        d.store.clear()
