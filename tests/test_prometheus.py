"""A real Prometheus server (Debian package) scrapes a running daemon; the key series are read
back through Prometheus's HTTP API."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from daemon.embedded import free_port, wait_for_port
from daemon.service import Daemon
from tests.streams import cooking_records, send, settings_for, wait_until

pytestmark = pytest.mark.integration


def test_prometheus_reads_ingest_lag_and_api_latency(broker, redis_url, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: `make test` installs it (Debian package)")
    settings = settings_for(broker, redis_url, tmp_path / "model", train=False)
    daemon = Daemon(settings)
    daemon.start()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: tagspace
    static_configs:
      - targets: ["{settings.http_addr}"]
""")
    prom = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 15, prom)
        send(broker, settings.posts_topic, cooking_records(300))
        wait_until(lambda: daemon.store.count_posts() == 300, 60, "posts stored")
        base = f"http://{settings.http_addr}"
        for _ in range(5):
            httpx.post(base + "/v1/suggest", json={"text": "garlic bread", "k": 3})

        def series(query: str) -> list:
            r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query})
            return r.json()["data"]["result"] if r.status_code == 200 else []

        def value(query: str) -> float:
            result = series(query)
            return float(result[0]["value"][1]) if result else -1.0

        topic = settings.posts_topic
        wait_until(lambda: value(f'tagspace_records_consumed_total{{topic="{topic}"}}') == 300,
                   30, "the ingest counter in Prometheus", every=1.0)
        wait_until(lambda: len(series("tagspace_consumer_lag")) > 0, 30, "lag series", 1.0)
        assert value(f'sum(tagspace_consumer_lag{{topic="{topic}"}})') == 0
        wait_until(lambda: value('tagspace_api_request_seconds_count{route="/v1/suggest",'
                                 'status="200"}') == 5, 30, "API latency series", every=1.0)
        assert value('up{job="tagspace"}') == 1
    finally:
        prom.terminate()
        prom.wait(10)
        daemon.shutdown()
        daemon.store.clear()
        time.sleep(0.1)
