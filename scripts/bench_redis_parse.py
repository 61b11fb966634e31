#!/usr/bin/env python
"""CPU of one feed-sized Redis read, redis-py's pure-Python reply parser against hiredis.

Writes --posts post hashes shaped as the daemon's (user, ts, tags, a d=64 float32 embedding,
version, tokens) under a prefix of its own, then times (process CPU, the mean of --reps) one
pipeline of HMGETs of all of them, the read ``Store.posts`` makes for new candidates, once with
each parser. The keys are deleted at the end.

Usage: python scripts/bench_redis_parse.py [--redis-url redis://127.0.0.1:6379/15] [--posts 50]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import numpy as np
import redis
from redis._parsers import _HiredisParser, _RESP3Parser

FIELDS = ["user", "ts", "tags", "emb", "ver"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    p.add_argument("--posts", type=int, default=50)
    p.add_argument("--reps", type=int, default=300)
    args = p.parse_args()
    prefix = f"parse{uuid.uuid4().hex[:8]}"
    keys = [f"{prefix}:post:p{i}" for i in range(args.posts)]
    setup = redis.Redis.from_url(args.redis_url)
    emb = np.random.default_rng(0).random(64, dtype=np.float32).tobytes()
    for key in keys:
        setup.hset(key, mapping={"user": "u1", "ts": "1700000000.0", "tags": '["a", "b"]',
                                 "emb": emb, "ver": "3", "tokens": json.dumps(["w"] * 11)})
    try:
        for name, parser in (("python", _RESP3Parser), ("hiredis", _HiredisParser)):
            client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(
                args.redis_url, protocol=3, parser_class=parser))

            def read(client: redis.Redis = client) -> None:
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.hmget(key, FIELDS)
                pipe.execute()

            for _ in range(20):
                read()
            times = []
            for _ in range(args.reps):
                start = time.process_time()
                read()
                times.append(time.process_time() - start)
            print(f"{name:8s} {np.mean(times) * 1e3:.3f} ms of CPU per {args.posts}-post read")
    finally:
        setup.delete(*keys)


if __name__ == "__main__":
    main()
