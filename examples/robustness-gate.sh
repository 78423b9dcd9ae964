#!/usr/bin/env bash
# Robustness gate for CI: fail the job when a classifier loses accuracy or
# consistency under local zoom.
#
#   examples/robustness-gate.sh MODEL VAL_DIR [MIN_ZOOM_TOP1] [MIN_CONSISTENCY]
#
# MODEL is a dec checkpoint (.safetensors) or a timm name (add --weights FILE or --pretrained via
# DEC_EVAL_ARGS); VAL_DIR is an ImageFolder tree (one subfolder per class).
# Steps: build a zoom sweep of VAL_DIR with `dec warp --zoom`, evaluate MODEL on
# it, and exit 1 when top-1 at any zoom factor, or the agreement of each image's
# prediction with its zoom-1 twin, falls below the thresholds. Reports land in
# $OUT_DIR (default ./robustness-report) for the CI job to keep as artifacts.
set -euo pipefail

model=${1:?usage: robustness-gate.sh MODEL VAL_DIR [MIN_ZOOM_TOP1] [MIN_CONSISTENCY]}
val=${2:?usage: robustness-gate.sh MODEL VAL_DIR [MIN_ZOOM_TOP1] [MIN_CONSISTENCY]}
min_top1=${3:-0.70}
min_consistency=${4:-0.90}
zooms=${ZOOMS:-0.7,0.8,0.9,1,1.1,1.2,1.3}
out=${OUT_DIR:-robustness-report}
sweep="$out/zoom-sweep"

mkdir -p "$out"
# --resume makes a rerun reuse the sweep built by an earlier (interrupted) job.
dec warp "$val" "$sweep" --zoom "$zooms" --resume --quiet

# shellcheck disable=SC2086  # DEC_EVAL_ARGS is split on purpose (e.g. "--weights w.pth --device cuda")
dec evaluate "$model" --data "$sweep" ${DEC_EVAL_ARGS:-} \
    --json "$out/report.json" --markdown "$out/report.md" --plot "$out/report.png" \
    --fail-if "zoom_top1_min<$min_top1" \
    --fail-if "zoom_consistency_min<$min_consistency"
