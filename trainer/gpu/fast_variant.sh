#!/bin/bash
# The fast variant's GPU step (issue 36): ResNet-10+CBAM students distilled from the cross-fitted teachers, four
# recipes side by side (an H100 trains four small students nearly as fast as one), each fitted to MINUTES.
#
# Here, first (the faces exactly as `trainer fit` prepares them):
#   trainer faces --dataset fer2013 --data ../shared/data --set model.depth=10 --set model.width=32 \
#       --set model.crop=40 --out .handoff/faces.npz
# On the GPU machine, from the repository root (PyTorch and numpy only):
#   bash trainer/gpu/fast_variant.sh .handoff/faces.npz .handoff/fast 8
# Here again, for each student: trainer import-weights STUDENT.npz --data ../shared/data --out runs/NAME, then
# `trainer export runs/NAME --int8 ptq --out models/fer2013-resnet10-cbam-w32` for the best one on PublicTest.
#
# Arguments: FACES OUT_DIR [MINUTES [extra student flags...]]; TEACHER overrides the teacher labels file.
# A CPU smoke run: bash trainer/gpu/fast_variant.sh faces.npz out 1 --epochs 1 --batch 32
set -euo pipefail
faces=${1:?usage: fast_variant.sh FACES OUT_DIR [MINUTES [flags...]]}
out=${2:?usage: fast_variant.sh FACES OUT_DIR [MINUTES [flags...]]}
minutes=${3:-8}
shift $(( $# < 3 ? $# : 3 ))
teacher=${TEACHER:-docs/results/campaign/gpu-teachers-xfit4.npz}
mkdir -p "$out"
pids=()
for width in 32 40; do
  for alpha in 0.5 0.9; do
    name="student-d10-w$width-a$alpha"
    python -m trainer.gpu.student "$faces" --teacher "$teacher" --alpha "$alpha" --minutes "$minutes" \
      --model "{\"depth\": 10, \"width\": $width}" --out "$out/$name.npz" "$@" > "$out/$name.log" 2>&1 &
    pids+=("$!")
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
tail -n 1 "$out"/student-*.log
exit "$status"
