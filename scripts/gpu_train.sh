#!/usr/bin/env bash
# Train the shipped embedding models on one rented GPU within a fixed wall clock.
#
#   bash scripts/gpu_train.sh PACK OUTDIR MINUTES
#   INIT_BL=bl.pt INIT_LONG=long.pt LR=5e-4 bash scripts/gpu_train.sh PACK OUTDIR MINUTES   # fine-tune
#
# Trains the 2.1 s baseline and the long-context attention model side by side
# on the same GPU (each is small; together they use it better), evaluates both
# on the paper's test protocol, measures GPU embedding throughput through
# torch (the serving path's batch shape), and leaves in OUTDIR:
#   bl/{best.pt,ckpt.pt,metrics.json,train.log}  long/{same}   (8 files)
# and prints the GPU serving throughput (torch, serving batch sizes).
# If a bf16 (AMP) run fails it is retried in float32 within the same budget.
set -uo pipefail
PACK=${1:?pack.npz}; OUTDIR=${2:?output folder}; MIN=${3:-7}
export PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR"
# the code lives under the `scorestream` name (package-dir mapping): install it in place
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || python3 -m pip install -q --no-deps -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), sys.version.split()[0])"

# Outputs go straight to OUTDIR (best.pt is rewritten at every improvement), so a run
# cut off by the lease still leaves its best model behind.
LR=${LR:-1e-3}
train() {  # name config minutes [init checkpoint]
  local name=$1 cfg=$2 min=$3 init=${4:-}
  local extra=(--lr "$LR")
  [ -n "$init" ] && extra+=(--init "$init" --warmup 100)
  python3 -m scorestream.models.train --pack "$PACK" --config "$cfg" --out "$OUTDIR/$name" --device cuda \
      --budget-min "$min" --batch 1024 --val-every 150 --patience 1000 "${extra[@]}" > "/tmp/$name.stdout" 2>&1
  local rc=$?
  if [ $rc -ne 0 ] && ! grep -q "valid step" "$OUTDIR/$name/train.log" 2>/dev/null; then
    echo "[$name] failed early (rc=$rc), retrying without AMP"; tail -8 "/tmp/$name.stdout"
    rm -rf "$OUTDIR/$name"
    python3 -m scorestream.models.train --pack "$PACK" --config "$cfg" --out "$OUTDIR/$name" --device cuda \
        --budget-min "$(python3 -c "print(max(1.0, $min - 0.8))")" --batch 1024 --val-every 150 --patience 1000 --no-amp "${extra[@]}" > "/tmp/$name.stdout" 2>&1
    rc=$?
  fi
  echo "[$name] exit $rc"; grep -E "valid step|stopped|pairs seen" "/tmp/$name.stdout" | tail -4
}

train bl baseline "$MIN" "${INIT_BL:-}" &
train long long "$MIN" "${INIT_LONG:-}" &
wait
grep -h -A7 "^| model" "$OUTDIR"/*/train.log

python3 - "$OUTDIR" <<'EOF'
"""GPU serving check through torch: embedding throughput at serving batch sizes."""
import json, sys, time, torch
from scorestream.models.nets import build_model, load_config
out = sys.argv[1]
res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "serving": {}}
for name in ("baseline", "long"):
    cfg = load_config(name)
    m = build_model(cfg).cuda().eval()
    for bs in (1, 16, 256):
        a = torch.randn(bs, 1, 92, cfg.audio_frames, device="cuda")
        s = torch.rand(bs, 1, 80, 100, device="cuda")
        with torch.no_grad():
            for _ in range(5):
                m.embed_audio(a); m.embed_sheet(s)
            torch.cuda.synchronize(); t = time.perf_counter(); n = 0
            while time.perf_counter() - t < 1.0:
                m.embed_audio(a); m.embed_sheet(s); n += 1
            torch.cuda.synchronize(); dt = (time.perf_counter() - t) / n
        res["serving"][f"{name}_b{bs}"] = {"ms_per_batch": round(dt * 1000, 3), "pairs_per_s": round(bs / dt, 1)}
print("GPU serving check (torch):", json.dumps(res))
EOF
ls -la "$OUTDIR"/*
