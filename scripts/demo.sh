#!/usr/bin/env bash
# The main job, as far as it exists today: build a small aligned corpus from music21's
# bundled scores, show its statistics and an alignment overlay, and evaluate the shipped
# embedding model on it (when weights are present).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/scorestream ] || bash scripts/setup.sh
OUT="${DEMO_OUT:-demo_out}"
mkdir -p "$OUT/src"
M21=$(.venv/bin/python -c "import music21, os; print(os.path.dirname(music21.__file__) + '/corpus')")
cp "$M21/joplin/maple_leaf_rag.mxl" "$M21/schumann_clara/polonaise_op1n1.mxl" "$M21/beethoven/opus18no1/movement3.mxl" "$OUT/src/" 2>/dev/null || true
cat > "$OUT/corpus.toml" <<TOML
[corpus]
performances = 1
valid_fraction = 0.0
test_fraction = 1.0
[timbres]
train = ["FluidR3_GM"]
test = "MuseScore_General"
[timbres.soundfonts]
FluidR3_GM = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
MuseScore_General = "/usr/share/sounds/sf3/MuseScore_General.sf3"
TOML
.venv/bin/scorestream corpus build --source "$OUT/src" --out "$OUT/corpus" --workers 2 --config "$OUT/corpus.toml"
.venv/bin/scorestream corpus show maple --corpus "$OUT/corpus" --second 20 --window 2 --out "$OUT/overlay.png"
if ls models/weights/*_audio.onnx >/dev/null 2>&1; then
  .venv/bin/scorestream eval retrieval --corpus "$OUT/corpus" --split test --candidates 2000 --json "$OUT/retrieval.json"
fi
echo "demo: outputs in $OUT/"
