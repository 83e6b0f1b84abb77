#!/usr/bin/env bash
# Reproduce docs/camvid.md: FCN-32s -> FCN-16s -> FCN-8s (staged) and FCN-8s at once on CamVid, then
# evaluate each on the val split. Usage: scripts/camvid.sh [32s-16s-8s|atonce|control|eval]  (from the repo root)
set -euo pipefail
FCNSEG=${FCNSEG:-.venv/bin/fcnseg}
ROOT=${CAMVID_ROOT:-../shared/data/camvid}
part=${1:-all}
if [[ $part == all || $part == 32s-16s-8s ]]; then
  for stage in fcn32s fcn16s fcn8s; do
    $FCNSEG train --config configs/camvid/$stage.yaml --root "$ROOT"
  done
fi
if [[ $part == all || $part == atonce ]]; then
  $FCNSEG train --config configs/camvid/fcn8s_atonce.yaml --root "$ROOT"
fi
if [[ $part == all || $part == control ]]; then
  $FCNSEG train --config configs/camvid/fcn32s_continued.yaml --root "$ROOT"
fi
if [[ $part == all || $part == eval ]]; then
  for stage in fcn32s fcn16s fcn8s fcn8s_atonce fcn32s_continued; do
    # --overwrite: these reports are the tracked docs, regenerated on purpose
    $FCNSEG eval runs/camvid/$stage/best.pth --dataset camvid --root "$ROOT" --split val --out docs/camvid/$stage --overwrite
  done
fi
