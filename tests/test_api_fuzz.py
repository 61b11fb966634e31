"""The HTTP API fuzzed from its own OpenAPI document (schemathesis): no 5xx, no hang, on a real
daemon (model, Redis) in this process."""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from daemon.service import Daemon
from tests.streams import settings_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_daemon(broker, redis_server, tmp_path_factory):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    daemon = Daemon(settings_for(broker, url, tmp_path_factory.mktemp("fuzz"), train=False,
                                 serve_process=False))  # the app in this process
    yield daemon  # the app alone: no Kafka loop needed to answer requests
    daemon.store.clear()
    daemon.redis.close()


def test_no_server_errors_and_no_hangs(api_daemon):
    # schemathesis' own pytest plugin does not run under pytest 9: its strategies, with
    # hypothesis, do the same job operation by operation.
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_daemon.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/suggest", "/v1/feed/{user_id}"}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=25, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case):  # type: ignore[no-untyped-def]
                start = time.perf_counter()
                response = case.call()
                unready = case.path == "/readyz" and response.status_code == 503  # no Kafka here
                assert response.status_code < 500 or unready, (case.path, response.text[:300])
                assert time.perf_counter() - start < 5.0, case.path
                if response.status_code >= 400:
                    assert "error" in response.json(), (case.path, response.text[:300])

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                if mode is not GenerationMode.NEGATIVE:
                    raise
