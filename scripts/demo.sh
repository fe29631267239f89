#!/usr/bin/env bash
# The main job: live identification and score following through the streaming server.
#
#   bash scripts/setup.sh && bash scripts/demo.sh [--keep-serving]
#
# 1. builds once (cached in demo_out/cache) a library of ~20 pieces engraved from music21's corpus
#    (verovio pages -> `scorestream library add`);
# 2. starts `scorestream serve` on it (127.0.0.1:${DEMO_PORT:-8765});
# 3. streams, through the websocket, a synthesized performance of the Maple Leaf Rag with its
#    repeats taken except one (skipped), then 10 s of speech (espeak-ng), then Mozart's K. 545,
#    printing live identification, positions and events;
# 4. writes demo_out/report.txt (+ .json): time to identify each piece, % of positions right, how
#    the speech was labelled; tells the browser URL. With --keep-serving the server stays up
#    (Ctrl-C stops it); otherwise it is stopped gracefully at the end.
#
#   DEMO_SPEED   audio seconds streamed per second (default 2; 1 = real time)
#   DEMO_PORT    server port (default 8765)
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=0
for arg in "$@"; do
  case "$arg" in
    --keep-serving) KEEP=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "demo: unknown option $arg (use --keep-serving)" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/scorestream ] || bash scripts/setup.sh
PY=.venv/bin/python
OUT="${DEMO_OUT:-demo_out}"
PORT="${DEMO_PORT:-8765}"
SPEED="${DEMO_SPEED:-2}"
export SCORESTREAM_TEST_CACHE="$OUT/cache"
mkdir -p "$OUT"
T0=$(date +%s)

echo "demo: [1/4] score library (20 pieces, built once, cached in $OUT/cache)"
LIB=$($PY tests/music_fixtures.py library --set demo)
.venv/bin/scorestream library list --library "$LIB" | cut -f1,2 | sed 's/^/    /'

echo "demo: [2/4] performance: Maple Leaf Rag (one repeat skipped) + 10 s of speech + Mozart K. 545"
$PY tests/music_fixtures.py demo-audio --set demo --out "$OUT" >/dev/null
$PY - "$OUT/demo.truth.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
print(f"    {t['seconds']:.0f} s of audio; the rag has {t['repeats_in_first']} repeats, repeat {t['skipped_repeat'] + 1} is skipped")
for s in t["segments"]:
    print(f"    {s['start']:6.1f}-{s['end']:6.1f} s  {s['piece'] or s['kind']}")
PY

echo "demo: [3/4] server"
.venv/bin/scorestream serve --library "$LIB" --port "$PORT" >"$OUT/server.log" 2>&1 &
SERVER=$!
cleanup() { if kill -0 "$SERVER" 2>/dev/null; then kill -TERM "$SERVER"; wait "$SERVER" || true; fi; }
trap cleanup EXIT
for _ in $(seq 1 240); do
  if $PY -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/healthz', timeout=2)" 2>/dev/null; then break; fi
  if ! kill -0 "$SERVER" 2>/dev/null; then echo "demo: the server did not start:"; cat "$OUT/server.log"; exit 1; fi
  sleep 0.5
done
echo "    serving on http://127.0.0.1:$PORT/ (browser client; log in $OUT/server.log)"

echo "demo: [4/4] streaming at ${SPEED}x real time (live line below; events as they come)"
.venv/bin/scorestream stream "$OUT/demo.wav" --server "ws://127.0.0.1:$PORT/ws" --speed "$SPEED" \
  --name demo --jsonl "$OUT/demo.jsonl"

echo
echo "demo: report ($OUT/report.txt)"
$PY tests/music_fixtures.py report --truth "$OUT/demo.truth.json" --jsonl "$OUT/demo.jsonl" \
  --json "$OUT/report.json" | tee "$OUT/report.txt"
echo "    (took $(( $(date +%s) - T0 )) s)"
echo
echo "demo: open http://127.0.0.1:$PORT/ in a browser, choose $OUT/demo.wav (or the microphone) and watch the score follow."
if [ "$KEEP" = 1 ]; then
  echo "demo: server left running (--keep-serving); Ctrl-C stops it"
  trap - EXIT
  trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER || true; exit 0' INT TERM
  wait "$SERVER"
fi
