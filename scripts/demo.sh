#!/usr/bin/env bash
# `make demo`: the daemon on its embedded default (own Kafka-protocol broker and Redis), the
# bundled cooking stream replayed into it, and where to look. Ctrl-C stops everything.
# DEMO_EXIT=1 stops after the replay (used by the tests).
set -euo pipefail
BIN=${BIN:-.venv/bin}
DEMO_DIR=${DEMO_DIR:-runs/demo}
HTTP=${TAGSPACE_HTTP_ADDR:-127.0.0.1:8080}
RATE=${DEMO_RATE:-300}
mkdir -p "$DEMO_DIR"
LOG="$DEMO_DIR/daemon.log"

if [ ! -f "$DEMO_DIR/model/config.json" ] && [ ! -f "$DEMO_DIR/model/checkpoints/LATEST" ]; then
  echo "== training a first model on the cooking questions (about a minute)"
  "$BIN/tagspace" train --data data/cooking/cooking.train --model tagspace --dim 64 \
    --epochs 5 --init-epochs 5 --out "$DEMO_DIR/model" --quiet
fi

echo "== starting the daemon (embedded broker and Redis), log in $LOG"
TAGSPACE_HTTP_ADDR=$HTTP "$BIN/tagspace" daemon --embedded --model-dir "$DEMO_DIR/model" \
  --checkpoint-interval-s 30 > "$LOG" 2>&1 &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null; exit 0' INT TERM
for _ in $(seq 1 120); do
  curl -fs "http://$HTTP/readyz" > /dev/null 2>&1 && break
  kill -0 $DAEMON 2>/dev/null || { echo "the daemon exited:"; tail -20 "$LOG"; exit 1; }
  sleep 0.5
done
BOOTSTRAP=$(grep -o 'kafka 127.0.0.1:[0-9]*' "$LOG" | head -1 | cut -d' ' -f2)

echo "== replaying the demo stream (3,000 cooking questions, with synthesized likes) at $RATE/s"
"$BIN/tagspace" replay --data data/cooking/cooking.valid --kafka-bootstrap "$BOOTSTRAP" \
  --rate "$RATE" --synthesize-interactions 1.0
sleep 2

cat <<MSG

== the daemon is running (Ctrl-C stops it)
  suggestions:  curl -s http://$HTTP/v1/suggest -H 'content-type: application/json' \\
                  -d '{"text": "how long should I rest a steak after grilling?", "k": 5}'
  a feed:       curl -s 'http://$HTTP/v1/feed/author7?k=5'
  a user:       curl -s 'http://$HTTP/v1/users/author7/history'
  metrics:      curl -s http://$HTTP/metrics | grep ^tagspace_
  API document: http://$HTTP/docs  (OpenAPI: /openapi.json)
  more posts:   $BIN/tagspace replay --data data/cooking/cooking.train --kafka-bootstrap $BOOTSTRAP --rate 200

MSG
echo "suggestions for the steak question now:"
curl -s "http://$HTTP/v1/suggest" -H 'content-type: application/json' \
  -d '{"text": "how long should I rest a steak after grilling?", "k": 5}'
echo
if [ "${DEMO_EXIT:-0}" = 1 ]; then
  kill -TERM $DAEMON; wait $DAEMON; exit 0
fi
wait $DAEMON
