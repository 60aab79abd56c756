#!/usr/bin/env bash
# The main job on built-in phantoms: phantom -> check -> build -> verify -> train -> infer + metrics.
# A few CPU minutes. Usage: bash tools/demo.sh [OUT_DIR]   (default: demo/)
set -euo pipefail
OUT=${1:-demo}
EPOCHS=${EPOCHS:-6}
rm -rf "$OUT"
patchstore phantom "$OUT/train" --cases 4 --seed 0
patchstore phantom "$OUT/test" --cases 1 --seed 1000          # a case the network never sees
patchstore check "$OUT/train"
patchstore build "$OUT/train" -o "$OUT/shards" --stride 12 --workers 2 --quiet
patchstore verify "$OUT/shards"
patchstore info "$OUT/shards"
train run "$OUT/shards" -o "$OUT/run" --epochs "$EPOCHS" --lr-step 4 --init kaiming --quiet
# Table 2 (patch classification) on the unseen case: every patch, no augmentation, no RUS
patchstore build "$OUT/test" -o "$OUT/test-shards" --stride 12 --angles "" --translations 0 --no-rus --quiet
train evaluate "$OUT/run/best.pt" "$OUT/test-shards"
infer volume "$OUT/test/imagesTr/phantom_000_0000.nii.gz" -m "$OUT/run/best.pt" -o "$OUT/pred.nii.gz" \
    --reference "$OUT/test/labelsTr/phantom_000.nii.gz" --overlay "$OUT/overlays" --quiet
echo "run folder: $OUT/run (metrics.jsonl, curves.png, confusion.png); mask: $OUT/pred.nii.gz; overlays: $OUT/overlays"
