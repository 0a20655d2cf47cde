#!/usr/bin/env bash
# Makes docs/reports/agiqa3k.md (a small teacher, its student and BRISQUE on AGIQA-3K).
#
# The AGIQA-3K report (issue 4): a small DP-IQA teacher trained here, a student distilled from it, both over
# 3 seeded prompt-grouped splits, against BRISQUE on the same test splits; writes docs/reports/agiqa3k.md.
#   recipes/report_agiqa.sh            (AGIQA=path/to/agiqa3k OUT=run-folder DPIQA=dpiqa to change)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${AGIQA:-../shared/datasets/agiqa3k}
OUT=${OUT:-../runs/agiqa-report}
DPIQA=${DPIQA:-dpiqa}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
COMMON="--dataset agiqa3k --root $ROOT --grouped --splits 3 --threads ${THREADS:-2}"
commands=(
  "$DPIQA train-teacher $COMMON --config dpiqa-teacher-small --random-prior --epochs 15 --batch-size 16 --lr 5e-4 --milestones 10 --output $OUT/teacher"
  "$DPIQA distill $COMMON --teacher $OUT/teacher/split-{seed} --config dpiqa-student-small --no-pretrained --epochs 15 --batch-size 24 --lr 1e-3 --milestones 10 --output $OUT/student"
)
for seed in 0 1 2; do
  commands+=("$DPIQA eval --model brisque --dataset agiqa3k --root $ROOT --seed $seed --grouped --json --device cpu > $OUT/brisque-$seed.json")
done
printf '%s\n' "${commands[@]}" > "$OUT/commands.txt"
for c in "${commands[@]}"; do
  echo "+ $c"
  bash -c "$c"
done
$PYTHON recipes/agiqa_report.py --runs "$OUT"
