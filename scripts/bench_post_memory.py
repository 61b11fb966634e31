#!/usr/bin/env python
"""Redis memory per post (``MEMORY USAGE``) as the daemon stores it, and with smaller embeddings.

Writes --posts real tweets of howyoutagtweets train.csv through the daemon's own ``Store.write``
(embeddings from --model, d = its dimension) under a prefix of its own in --redis-url, reads
the ``P:post:{id}`` hashes' sizes, then rewrites each hash's ``emb`` field as a smaller encoding
would store it (each hash written afresh with the same other fields) and reads the sizes again:

- float32: the daemon's default (``redis_embedding_dtype``; 4 x d bytes);
- float16: ``redis_embedding_dtype = float16`` (2 x d bytes and a tag byte);
- int8 + scale: d bytes of codes, the row's float32 scale in a field of its own (``es``): not
  a setting, measured to decide.

Redis keeps a hash whose every value is at most ``hash-max-listpack-value`` bytes (64 by
default) as one compact listpack, else as a hash table with an allocation per field; the
encodings seen are counted. Feed recall with embeddings read back at each precision is
``scripts/bench_feed.py --stored``. Every key written is deleted at the end.

Usage: python scripts/bench_post_memory.py --model runs/q-d64-bf16off [--posts 2000]
       [--redis-url redis://127.0.0.1:6379/15] [--json F]
"""

from __future__ import annotations

import argparse
import json
import platform
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import redis

from daemon.store import Store, encode_embedding
from tagspace.checkpoint import load_checkpoint
from tagspace.dataset import read_posts

HYT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "howyoutagtweets"


def encoded(embedding: np.ndarray, kind: str) -> dict[str, bytes]:
    if kind == "int8":  # not a daemon setting (yet): measured to decide
        scale = np.float32(np.abs(embedding).max() / 127.0)
        codes = np.round(embedding / scale).astype(np.int8)
        return {"emb": codes.tobytes(), "es": scale.tobytes()}
    return {"emb": encode_embedding(embedding, kind)}  # as the daemon writes them


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, default=HYT / "train.csv")
    p.add_argument("--posts", type=int, default=2000)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    posts = [q for q in read_posts(args.data, require_tags=False) if q.tokens][: args.posts]
    tagger = load_checkpoint(args.model).tagger
    embeddings = tagger.embed_all([q.tokens for q in posts])
    client = redis.Redis.from_url(args.redis_url)
    store = Store(client, f"mem{uuid.uuid4().hex[:8]}")
    try:
        for start in range(0, len(posts), 500):
            chunk = list(zip(posts[start:start + 500], embeddings[start:start + 500],
                             strict=True))
            store.write(chunk, 1, [])
        keys = [store.post_key(q.post_id) for q in posts]
        written = [client.hgetall(k) for k in keys]  # every field as Store.write left it
        rows = {}
        for kind in ("float32", "float16", "int8"):
            pipe = client.pipeline(transaction=False)
            for key, fields, emb in zip(keys, written, embeddings, strict=True):
                # a fresh hash (Redis never converts a hash table back to a listpack)
                pipe.delete(key)
                pipe.hset(key, mapping={**{f: v for f, v in fields.items() if f != b"emb"},
                                        **encoded(emb, kind)})
            pipe.execute()
            sizes = [client.memory_usage(k, samples=0) for k in keys]
            kinds = Counter(client.object("encoding", k).decode() for k in keys)
            rows[kind] = {"bytes_per_post": round(float(np.mean(sizes)), 1),
                          "encodings": dict(kinds)}
        base = rows["float32"]["bytes_per_post"]
        for row in rows.values():
            row["saving"] = round(1 - row["bytes_per_post"] / base, 3)
        authored = sum(client.memory_usage(k, samples=0) or 0 for k in
                       {store.authored_key(q.user_id or "") for q in posts})
        out = {"machine": platform.node(), "model": str(args.model), "dim": embeddings.shape[1],
               "posts": len(posts), "redis": client.info("server")["redis_version"],
               "hash_max_listpack_value": client.config_get("hash-max-listpack-value"),
               "per_post": rows,
               "authored_lists_bytes_per_post": round(authored / len(posts), 1)}
    finally:
        store.clear()
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
