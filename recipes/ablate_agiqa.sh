#!/usr/bin/env bash
# Makes docs/reports/ablation-teacher.md and ablation-student.md (the AGIQA-3K ablations).
#
# The ablation tables (issue 9) on AGIQA-3K with the CPU-sized models: teacher switches and student
# losses, each variant over 3 seeded prompt-grouped splits with the same Ray Train job; writes
# docs/reports/ablation-teacher.md and docs/reports/ablation-student.md (read with docs/reports/ablation.md). Run after recipes/report_agiqa.sh
# (the student variants distill from its teachers).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${AGIQA:-../shared/datasets/agiqa3k}
REPORT=${REPORT:-../runs/agiqa-report}
OUT=${OUT:-../runs/ablation}
DPIQA=${DPIQA:-dpiqa}
COMMON="--dataset agiqa3k --root $ROOT --grouped --splits 3 --threads ${THREADS:-2} --epochs 8 --milestones 6"
$DPIQA ablate --kind teacher --variants paper,no-text-adapter,no-image-adapter $COMMON \
  --config dpiqa-teacher-tiny --random-prior --batch-size 16 --lr 5e-4 --output "$OUT/teacher"
$DPIQA ablate --kind student --variants feature-distillation,score-distillation,labels-only --teacher "$REPORT/teacher/split-{seed}" $COMMON --config dpiqa-student-small \
  --no-pretrained --batch-size 24 --lr 1e-3 --output "$OUT/student"
mkdir -p docs/reports
cp "$OUT/teacher/ablation.md" docs/reports/ablation-teacher.md
cp "$OUT/student/ablation.md" docs/reports/ablation-student.md
