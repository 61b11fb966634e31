"""One /metrics for two processes: the daemon's and the serving process's families merged."""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import Exposition, Metrics, merge_families
from tests.streams import metric


def test_counters_and_histograms_add_up_and_each_gauge_comes_from_its_owner():
    daemon, server = Metrics(), Metrics()
    daemon.consumed.labels("posts").inc(7)
    daemon.redis_latency.labels("write").observe(0.003)
    daemon.model_version.set(4)  # the daemon's gauge: the server holds the default
    server.redis_latency.labels("write").observe(0.02)  # the same series in both
    server.redis_latency.labels("feed_state").observe(0.001)  # only in the server
    server.api_latency.labels("/v1/suggest", "200").observe(0.004)
    server.feed_candidates.set(1234)  # the server's gauge: the daemon holds the default
    text = generate_latest(Exposition(  # type: ignore[arg-type]
        merge_families(daemon.registry.collect(), server.registry.collect()))).decode()
    assert metric(text, "tagspace_records_consumed_total", topic="posts") == 7
    assert metric(text, "tagspace_redis_operation_seconds_count", operation="write") == 2
    assert abs(metric(text, "tagspace_redis_operation_seconds_sum", operation="write")
               - 0.023) < 1e-9
    assert metric(text, "tagspace_redis_operation_seconds_bucket", operation="write",
                  le="0.005") == 1
    assert metric(text, "tagspace_redis_operation_seconds_count", operation="feed_state") == 1
    assert metric(text, "tagspace_api_request_seconds_count", route="/v1/suggest",
                  status="200") == 1
    assert metric(text, "tagspace_model_version") == 4
    assert metric(text, "tagspace_feed_candidates") == 1234
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))  # each family once: a valid exposition
