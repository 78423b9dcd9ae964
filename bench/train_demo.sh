#!/usr/bin/env bash
# Reproduce the two bundled demo models from scratch with the project's own commands.
#
#   bench/train_demo.sh            # both models, then install them into dec_cli/data/
#   STEPS=baseline bench/train_demo.sh   # only one of: data baseline dec install evaluate
#
# (1) baseline: timm's tiny `test_resnet` (375k parameters, random init: no
#     pretrained weights offline), trained with warp augmentation (--aug-prob);
# (2) the same backbone retrofitted with DEC (recipe `resnet`: one DEC before
#     layer2, 8 intervals and 2 control rows so each digit can be rescaled on
#     its own; 3 solver iterations), trained with the same settings plus the
#     recipe chosen on the `wide` protocol's validation split: the
#     canonicalization loss (--canon-weight 1) and the invariance loss
#     (--eq-weight 1).
# Both on the digits benchmark with the demo's settings (DEMO_CONFIG in
# dec_cli/jobs/demo.py: `dec digits` defaults, seed 0), 64x64 inputs, fixed seeds.
# Set EPOCHS, THREADS, OUT to change the run; anything else is fixed here.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bench/out/demo}
EPOCHS=${EPOCHS:-6}
THREADS=${THREADS:-2}
STEPS=${STEPS:-"data baseline dec install evaluate"}
NPZ=dec_cli/data/mnist-8k.npz
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
# Settings shared by both models: only DEC differs.
COMMON=(--img-size 64 --epochs "$EPOCHS" --batch-size 64 --lr 3e-3 --dec-lr 3e-3 --weight-decay 0.05
        --warmup-epochs 1 --aug-prob 0.5 --scale-range 0.75,1.33 --seed 0 --quiet)
mkdir -p "$OUT"
has() { [[ " $STEPS " == *" $1 "* ]]; }

if has data; then
  python -m dec_cli digits "$NPZ" "$OUT/digits" --seed 0 --overwrite --quiet
fi
if has baseline; then
  rm -rf "$OUT/baseline"
  python -m dec_cli finetune test_resnet "$OUT/digits" -o "$OUT/baseline" --random-init --num-classes 20 \
    "${COMMON[@]}"
fi
if has dec; then
  rm -rf "$OUT/dec"
  python -m dec_cli retrofit test_resnet --random-init --num-classes 20 --img-size 64 --grid 8 --rows 2 \
    --iters 3 --seed 0 -o "$OUT/dec-init.safetensors" --force --quiet
  python -m dec_cli finetune "$OUT/dec-init.safetensors" "$OUT/digits" -o "$OUT/dec" "${COMMON[@]}" \
    --canon-weight 1.0 --eq-weight 1.0
fi
if has install; then
  cp "$OUT/baseline/best.safetensors" dec_cli/data/digits-baseline.safetensors
  cp "$OUT/dec/best.safetensors" dec_cli/data/digits-dec.safetensors
  ls -l dec_cli/data/digits-*.safetensors
fi
if has evaluate; then
  python -m dec_cli evaluate dec_cli/data/digits-baseline.safetensors dec_cli/data/digits-dec.safetensors \
    --data "$OUT/digits/test" --warps 4 --seed 0 --json "$OUT/eval-test.json"
  python -m dec_cli evaluate dec_cli/data/digits-baseline.safetensors dec_cli/data/digits-dec.safetensors \
    --data "$OUT/digits/test-zoom" --seed 0 --json "$OUT/eval-zoom.json"
fi
