#!/usr/bin/env bash
# The main job on built-in phantoms: phantom -> check -> build -> verify -> train -> infer + metrics.
# A few CPU minutes. Usage: bash tools/demo.sh [OUT_DIR]   (default: demo/)
set -euo pipefail
OUT=${1:-demo}
EPOCHS=${EPOCHS:-6}
step() { echo "== [$(date +%T)] $*" >&2; }   # where the demo is; progress bars show the work inside a step
rm -rf "$OUT"
step "1/8 phantoms: 4 for training, 1 unseen for testing"
patchstore phantom "$OUT/train" --cases 4 --seed 0
patchstore phantom "$OUT/test" --cases 1 --seed 1000          # a case the network never sees
step "2/8 check the training data"
patchstore check "$OUT/train"
step "3/8 build the training shards (the default recipe; stride 6 instead of 3 keeps the demo short)"
patchstore build "$OUT/train" -o "$OUT/shards" --stride 6 --workers 2
step "4/8 verify and list them"
patchstore verify "$OUT/shards"
patchstore info "$OUT/shards"
step "5/8 train ($EPOCHS epochs)"
train run "$OUT/shards" -o "$OUT/run" --epochs "$EPOCHS" --lr-step 4
# Table 2 (patch classification) on the unseen case: every patch, no augmentation, no RUS
step "6/8 evaluation shards of the unseen case"
patchstore build "$OUT/test" -o "$OUT/test-shards" --stride 6 --angles "" --translations 0 --no-rus --quiet
step "7/8 patch classification of the unseen case (the paper's Table 2)"
train evaluate "$OUT/run/best.pt" "$OUT/test-shards"
step "8/8 segment the unseen CT, every pixel's patch, and score it"
infer volume "$OUT/test/imagesTr/phantom_000_0000.nii.gz" -m "$OUT/run/best.pt" -o "$OUT/pred.nii.gz" \
    --reference "$OUT/test/labelsTr/phantom_000.nii.gz" --overlay "$OUT/overlays"
step "done"
echo "run folder: $OUT/run (metrics.jsonl, curves.png, confusion.png); mask: $OUT/pred.nii.gz;" \
     "look first at $OUT/overlays/phantom_000_summary.png (axial slices in $OUT/overlays/phantom_000/)"
