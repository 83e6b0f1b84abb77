#!/usr/bin/env bash
# Reproduce docs/camvid.md. Usage, from the repo root: scripts/camvid.sh PART [fcnseg train flags...]
#   best        the best recipe: FCN-8s from scratch, inverse-log class weights (configs/camvid/fcn8s_il_w8.yaml)
#   mf, plain   the same with median-frequency weights / without class weights (fcn8s_mf_w8, fcn8s_plain_w8)
#   w4          the median-frequency recipe at 1/4 width for the same time (configs/camvid/fcn8s_mf_w4.yaml)
#   road        road / not road FCN-8s (configs/camvid/road_fcn8s.yaml)
#   32s-16s-8s  the earlier staged recipe; atonce; control (FCN-32s trained as long as the staged FCN-8s)
#   eval        score every run's last.pth on val into docs/camvid/<run> (the last iteration: nothing is
#               chosen on val), and the best recipe's also with test-time flips and scales into <run>_tta
# Flags after PART go to every fcnseg train, e.g. --threads 1 (as docs/camvid.md's runs were made).
set -euo pipefail
FCNSEG=${FCNSEG:-.venv/bin/fcnseg}
ROOT=${CAMVID_ROOT:-../shared/data/camvid}
BEST=fcn8s_il_w8  # the config (and run) of the best recipe
part=${1:-}
shift || true
train() { $FCNSEG train --config "configs/camvid/$1.yaml" --root "$ROOT" "${@:2}"; }
case $part in
  best) train $BEST "$@" ;;
  mf) train fcn8s_mf_w8 "$@" ;;
  plain) train fcn8s_plain_w8 "$@" ;;
  w4) train fcn8s_mf_w4 "$@" ;;
  road) train road_fcn8s "$@" ;;
  32s-16s-8s) for stage in fcn32s fcn16s fcn8s; do train $stage "$@"; done ;;
  atonce) train fcn8s_atonce "$@" ;;
  control) train fcn32s_continued "$@" ;;
  eval)
    for run in fcn32s fcn16s fcn8s fcn8s_atonce fcn32s_continued fcn8s_mf_w8 fcn8s_mf_w4 fcn8s_plain_w8 fcn8s_il_w8 \
        road_fcn8s; do
      [[ -f runs/camvid/$run/last.pth ]] || { echo "camvid.sh: no runs/camvid/$run/last.pth; skipped" >&2; continue; }
      map=()
      [[ $run == road_fcn8s ]] && map=(--class-map '{"*": not_road, road: road}')
      # --overwrite: these reports are the tracked docs, regenerated on purpose
      $FCNSEG eval runs/camvid/$run/last.pth --dataset camvid --root "$ROOT" --split val "${map[@]}" \
        --out docs/camvid/$run --overwrite
    done
    if [[ -f runs/camvid/$BEST/last.pth ]]; then
      $FCNSEG eval runs/camvid/$BEST/last.pth --dataset camvid --root "$ROOT" --split val --flip --scales 0.75 1 1.25 \
        --out docs/camvid/${BEST}_tta --overwrite
    fi ;;
  *) echo "usage: scripts/camvid.sh best|mf|plain|w4|road|32s-16s-8s|atonce|control|eval [fcnseg train flags]" >&2
     exit 2 ;;
esac
