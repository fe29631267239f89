#!/usr/bin/env bash
# Issue 12, steps 2-3: corpus v2 -> training pack -> CPU fine-tune of both shipped models
# -> checkpoint choice on the realistic VALIDATION conditions.  One long job at a time,
# nice 19, one thread; every stage is resumable: just run this script again.
#
#   nohup setsid bash models/conditions/finetune_v2.sh > logs/finetune_v2.log 2>&1 &
#
# Environment: OUT (runs/v2), CORPUS (data/corpus_v2), PACK (pack/pack_v2.npz),
# BUDGET_BL1 / BUDGET_BL2 (training minutes, total over resumes; 180 each), LR (2e-4).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=.venv/bin/python
OUT=${OUT:-runs/v2}
CORPUS=${CORPUS:-data/corpus_v2}
PACK=${PACK:-pack/pack_v2.npz}
LR=${LR:-2e-4}
mkdir -p logs "$OUT" "$(dirname "$PACK")"
stamp() { echo "=== $* $(date -u +%FT%TZ)"; }

# 1. the v2 corpus (configs/corpus.toml), training and validation splits
stamp corpus build
nice -n 19 .venv/bin/scorestream corpus build --source ../shared/data/lieder/scores ../shared/data/piano \
    --out "$CORPUS" --workers 1 --split train valid --no-progress

# 2. the test split: linked from data/corpus (its paper-condition take, performance 0, is
#    byte-identical under the v2 config), so that the pack carries the paper's test protocol
stamp link test pieces
$PY -m scorestream.models.conditions.link_split "$CORPUS" data/corpus test

# 3. the training pack (400 MB, 60 s excerpts of the training takes: one per piece folder first)
if [ ! -f "$PACK" ]; then
  stamp pack
  nice -n 19 .venv/bin/scorestream corpus pack "$CORPUS" --out "$PACK.tmp.npz" --max-mb 400 --excerpt-s 60
  mv "$PACK.tmp.npz" "$PACK"
fi

# 4. torch starting points: the shipped ONNX weights (no .pt is shipped), BatchNorms recalibrated on the pack
for m in bl1_2s bl2_4s_at; do
  [ -f "$OUT/init_$m.pt" ] || nice -n 19 $PY -m scorestream.models.conditions.onnx_init --model "$m" --pack "$PACK" --out "$OUT/init_$m.pt"
done

# 5. fine-tune, one model after the other; a watcher copies every ckpt.pt written at a
#    validation into snapshots/ (checkpoints are chosen later, on the realistic conditions)
train() {
  local name=$1 cfg=$2 budget=$3
  local run="$OUT/$name"
  mkdir -p "$run/snapshots"
  echo "{\"shipped\": \"$name\"}" > "$run/snapshots/config.json"
  stamp train "$name"
  nice -n 19 $PY -m scorestream.models.train --pack "$PACK" --init "$OUT/init_$name.pt" --out "$run" --resume \
      --device cpu --threads 1 --batch 128 --lr "$LR" --warmup 100 --sched cosine --budget-min "$budget" \
      --val-every 250 --val-pairs 2000 --test-pairs 10000 --patience 1000 --seed 2 &
  local pid=$!
  local last=""
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    if [ -f "$run/ckpt.pt" ]; then
      local m; m=$(stat -c %Y "$run/ckpt.pt")
      if [ "$m" != "$last" ]; then
        local step; step=$(grep -o "valid step [0-9]*" "$run/train.log" | tail -1 | grep -o "[0-9]*$" || echo 0)
        sleep 5; cp "$run/ckpt.pt" "$run/snapshots/step_$(printf %06d "$step").pt"; last=$m
      fi
    fi
  done
  wait "$pid"
}
train bl1_2s baseline "${BUDGET_BL1:-180}"
train bl2_4s_at long "${BUDGET_BL2:-180}"

# 6. choose checkpoints on realistic_valid + vienna_schubert_realistic (never the test split)
stamp select
nice -n 19 $PY -m scorestream.models.conditions.select --run "$OUT/bl1_2s" --run "$OUT/bl2_4s_at" --every 2 \
    --out "$OUT/selection.json"
stamp done
