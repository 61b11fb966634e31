"""Can the embedded Tansu keep its topics on disk? The probe behind docs/RELIABILITY.md's answer.

1. Each storage engine the Tansu build might have, started for real: which ones it refuses.
2. With ``--s3rver DIR`` (an ``npm install s3rver@3.7.1`` folder; Node on PATH): Tansu's s3://
   engine on s3rver, an S3 server that keeps objects on disk. Three producers write to one
   partition at once; the probe counts what the broker acknowledged against what it stored.
   Tansu relies on conditional writes (If-Match / If-None-Match) to serialise them.

    .venv/bin/python scripts/probe_broker_durability.py --s3rver /tmp/s3t \\
        --json docs/results/broker-durability.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.embedded import free_port, tansu_binary, wait_for_port  # noqa: E402


def engine_refusal(url: str) -> str | None:
    """Tansu's own word when it refuses ``url`` at start-up; None when it starts with it."""
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "LISTENER_URL": listener, "ADVERTISED_LISTENER_URL": listener,
           "STORAGE_ENGINE": url}
    process = subprocess.Popen([tansu_binary(), "broker"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = process.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return None
    found = re.search(r"FeatureNotEnabled \{[^}]*\}", re.sub(r"\x1b\[[0-9;]*m", "", out))
    return found.group(0) if found else out.strip()[-300:]


def concurrent_producers_on_s3rver(s3rver: Path, producers: int, each: int) -> dict:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    data = Path(tempfile.mkdtemp(prefix="s3rver-"))
    s3_port, kafka_port = free_port(), free_port()
    s3 = subprocess.Popen(["node", str(s3rver / "node_modules/s3rver/bin/s3rver.js"), "-d",
                           str(data), "-a", "127.0.0.1", "-p", str(s3_port),
                           "--configure-bucket", "tansu"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.STDOUT)
    listener = f"tcp://127.0.0.1:{kafka_port}"
    env = {**os.environ, "AWS_ENDPOINT": f"http://127.0.0.1:{s3_port}", "AWS_ALLOW_HTTP": "true",
           "AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER",
           "AWS_DEFAULT_REGION": "us-east-1", "LISTENER_URL": listener,
           "ADVERTISED_LISTENER_URL": listener, "STORAGE_ENGINE": "s3://tansu/"}
    broker = None
    try:
        wait_for_port("127.0.0.1", s3_port, 15, s3, "s3rver")
        broker = subprocess.Popen([tansu_binary(), "broker", "--silent"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", kafka_port, 15, broker, "tansu")
        bootstrap = f"127.0.0.1:{kafka_port}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic("one", 1, 1)])
        admin.close()
        acked = [0] * producers

        def produce(n: int) -> None:
            p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                              enable_idempotence=False)
            futures = [p.send("one", f"{n}-{i}".encode()) for i in range(each)]
            p.flush()
            acked[n] = sum(1 for f in futures if f.succeeded())
            p.close()
        threads = [threading.Thread(target=produce, args=(n,)) for n in range(producers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                 consumer_timeout_ms=5000)
        tp = TopicPartition("one", 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        stored = {m.value for m in consumer}
        consumer.close()
        return {"producers": producers, "acknowledged": sum(acked), "stored": len(stored)}
    finally:
        for process in (broker, s3):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(5)
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--s3rver", type=Path, help="folder where s3rver@3.7.1 is installed")
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--each", type=int, default=3000, help="records per producer")
    parser.add_argument("--json", type=Path, help="write the findings here")
    args = parser.parse_args()
    findings: dict = {"engines": {}}
    for url in ("postgres://tansu@127.0.0.1:5432/tansu", "sqlite://tansu.db"):
        refusal = engine_refusal(url)
        findings["engines"][url.split(":")[0]] = refusal or "starts"
        print(f"{url.split(':')[0]}: {refusal or 'starts'}")
    if args.s3rver:
        started = time.monotonic()
        result = concurrent_producers_on_s3rver(args.s3rver, args.producers, args.each)
        result["seconds"] = round(time.monotonic() - started, 1)
        findings["s3_on_s3rver"] = result
        print(f"s3:// on s3rver: {result['acknowledged']} acknowledged, {result['stored']} "
              f"stored ({result['producers']} producers on one partition)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(findings, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
