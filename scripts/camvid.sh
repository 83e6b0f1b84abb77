#!/usr/bin/env bash
# Reproduce docs/camvid.md. Usage, from the repo root: scripts/camvid.sh PART [fcnseg train flags...]
#   best        the best recipe: FCN-8s from scratch at 1/4 width, gentle inverse-log class weights
#               1 / ln(1.2 + share), 15000 it. of 4 crops of 336x448, EMA of the weights, CutMix on half of the
#               crops, bf16 where the CPU has it natively (configs/camvid/fcn8s_il12_ema_w4_15k_b4_crop336_cutmix.yaml)
#   w4-cutmix   the best recipe before: 8 crops of 240x320 for 10000 it. (fcn8s_il12_ema_w4_10k_cutmix)
#   cutmix      the best recipe before that, at 1/8 width for 16000 it. (fcn8s_il12_ema_w8_16k_cutmix)
#   il12        the best recipe before CutMix, in float32 (fcn8s_il12_ema_w8_16k)
#   il11        il12 with 1 / ln(1.1 + share) (fcn8s_il11_ema_w8_16k)
#   il-ema      il12 with ENet's 1 / ln(1.02 + share) (fcn8s_il_ema_w8_16k; the best recipe before)
#   plain-ema   il12 without class weights (fcn8s_plain_ema_w8_16k)
#   il          inverse-log weights, 12000 it., no EMA (fcn8s_il_w8; the best recipe before the malloc saving)
#   mf, plain   fcn8s_il_w8 with median-frequency weights / without class weights (fcn8s_mf_w8, fcn8s_plain_w8)
#   w4          the median-frequency recipe at 1/4 width for the same time (configs/camvid/fcn8s_mf_w4.yaml)
#   road        road / not road FCN-8s (configs/camvid/road_fcn8s.yaml)
#   32s-16s-8s  the earlier staged recipe; atonce; control (FCN-32s trained as long as the staged FCN-8s)
#   heldout     the drive-held-out protocol: the best recipe trained without drive 0006R0 and validated on it
#               (configs/camvid/heldout/fcn8s_il12_ema_w8_16k.yaml), then its last.pth scored on 0006R0
#               (docs/camvid/heldout/<run>) and on val (docs/camvid/heldout/<run>_val)
#   heldout-photo  the same with photometric augmentation (configs/camvid/heldout/fcn8s_il12_ema_w8_16k_photo.yaml)
#   heldout-cutmix the same with CutMix (configs/camvid/heldout/fcn8s_il12_ema_w8_16k_cutmix.yaml)
#   heldout-w4  CutMix at 1/4 width for 10000 it., about the same CPU time in bf16 (give --amp bf16 or auto;
#               configs/camvid/heldout/fcn8s_il12_ema_w4_10k_cutmix.yaml)
#   heldout-w3of8  heldout-w4 at 3/8 width for 5500 it., about the same CPU time in bf16 (--amp bf16 or auto)
#   heldout-w4-wd05  heldout-w4 with weight decay 0.05 (--amp bf16 or auto)
#   heldout-w4-b4  heldout-w4 at batch 4 for 19000 it., about the same CPU time (--amp bf16 or auto)
#   heldout-w4-crop336  heldout-w4 with 4 crops of 336x448 a batch, 11000 it., about the same CPU time (--amp bf16)
#   heldout-crop336-15k  heldout-w4-crop336 for 15000 it.: the 2 CPU-hours spent (--amp bf16 or auto)
#   heldout-crop336-b2  heldout-w4-crop336 at batch 2 for 18000 it., about the same CPU time (--amp bf16 or auto)
#   screen CONFIG SEED  a 3000-iteration screen of configs/camvid/heldout/CONFIG.yaml with --seed SEED, into
#               runs/heldout/CONFIG_3k_sSEED, scored the same way (the seeds measure the spread between runs);
#               with --amp bf16 (or auto), runs/heldout/CONFIG_3k_sSEED_bf16 (_auto)
#   seed CONFIG SEED  the whole schedule of configs/camvid/heldout/CONFIG.yaml with --seed SEED, into
#               runs/heldout/CONFIG_sSEED, scored the same way: a second run of a recipe, for its spread
#   eval        score every run's last.pth on val into docs/camvid/<run> (the last iteration: nothing is
#               chosen on val); the one-stage 11-class runs also with test-time flips and scales (<run>_tta),
#               and the EMA runs' training weights (kept in last.pth beside the average) into <run>_train_weights
# Flags after PART go to every fcnseg train, e.g. --threads 1 (as docs/camvid.md's runs were made);
# the heldout parts also pass --threads to their fcnseg eval, and choose their run folder (no --out). eval takes
# --threads only.
set -euo pipefail
FCNSEG=${FCNSEG:-.venv/bin/fcnseg}
PYTHON=${PYTHON:-.venv/bin/python}
ROOT=${CAMVID_ROOT:-../shared/data/camvid}
BEST=fcn8s_il12_ema_w4_15k_b4_crop336_cutmix  # the config (and run) of the best recipe
part=${1:-}
shift || true
train() { $FCNSEG train --config "configs/camvid/$1.yaml" --root "$ROOT" "${@:2}"; }
HELDOUT=0006R0  # the drive the held-out configs leave out of training and validate on
HELDOUT_PARTS=(  # "PART CONFIG": scripts/camvid.sh PART runs heldout CONFIG CONFIG (below)
  "heldout fcn8s_il12_ema_w8_16k"
  "heldout-photo fcn8s_il12_ema_w8_16k_photo"
  "heldout-cutmix fcn8s_il12_ema_w8_16k_cutmix"
  "heldout-w4 fcn8s_il12_ema_w4_10k_cutmix"
  "heldout-w3of8 fcn8s_il12_ema_w3of8_5500_cutmix"
  "heldout-w4-wd05 fcn8s_il12_ema_w4_10k_cutmix_wd05"
  "heldout-w4-b4 fcn8s_il12_ema_w4_19k_b4_cutmix"
  "heldout-w4-crop336 fcn8s_il12_ema_w4_11k_b4_crop336_cutmix"
  "heldout-crop336-15k fcn8s_il12_ema_w4_15k_b4_crop336_cutmix"
  "heldout-crop336-b2 fcn8s_il12_ema_w4_18k_b2_crop336_cutmix"
)
flag_value() {  # flag_value --NAME ARGS...: print the last value given to --NAME in ARGS (--NAME V or --NAME=V)
  local name=$1 value='' found=1 previous='' arg
  for arg in "${@:2}"; do
    [[ $previous == "$name" ]] && value=$arg found=0
    [[ $arg == "$name"=* ]] && value=${arg#"$name"=} found=0
    previous=$arg
  done
  echo "$value"
  return $found
}
heldout() {  # heldout CONFIG NAME [flags]: train configs/camvid/heldout/CONFIG.yaml into runs/heldout/NAME, then
             # score its last.pth on the held-out drive (docs/camvid/heldout/NAME) and on val (NAME_val)
  if flag_value --out "${@:3}" > /dev/null; then  # training went there, and the old runs/heldout/NAME was scored
    echo "camvid.sh: the held-out parts train into runs/heldout/$2 and score that run into docs/camvid/heldout/$2:" \
      "leave out --out" >&2
    exit 2
  fi
  train "heldout/$1" --out "runs/heldout/$2" "${@:3}"
  local threads=() value  # fcnseg eval takes --threads, not the other training flags
  if value=$(flag_value --threads "${@:3}"); then threads=(--threads "$value"); fi
  local weights=runs/heldout/$2/last.pth
  # --overwrite: these reports are the tracked docs, regenerated on purpose
  $FCNSEG eval "$weights" --dataset camvid --root "$ROOT" --split "train[$HELDOUT]" "${threads[@]}" \
    --out "docs/camvid/heldout/$2" --overwrite
  $FCNSEG eval "$weights" --dataset camvid --root "$ROOT" --split val "${threads[@]}" \
    --out "docs/camvid/heldout/$2_val" --overwrite
}
config_and_seed() {  # config_and_seed PART ARGS...: exit with PART's usage unless ARGS start with CONFIG SEED
  [[ $# -ge 3 && -f configs/camvid/heldout/$2.yaml && $3 =~ ^[0-9]+$ ]] && return
  echo "usage: scripts/camvid.sh $1 CONFIG SEED [fcnseg train flags], CONFIG one of:" \
    $(cd configs/camvid/heldout && ls -- *.yaml | sed 's/\.yaml$//') >&2
  exit 2
}
# The parts run from a function, called on the script's last line together with exit: bash has read all of it
# before a part starts, so an edit saved while a long training runs cannot shift the lines it reads next.
run_part() {
local entry
for entry in "${HELDOUT_PARTS[@]}"; do
  if [[ $part == "${entry% *}" ]]; then heldout "${entry#* }" "${entry#* }" "$@"; return; fi
done
case $part in
  best) train $BEST "$@" ;;
  w4-cutmix) train fcn8s_il12_ema_w4_10k_cutmix "$@" ;;
  cutmix) train fcn8s_il12_ema_w8_16k_cutmix "$@" ;;
  il12) train fcn8s_il12_ema_w8_16k "$@" ;;
  plain-ema) train fcn8s_plain_ema_w8_16k "$@" ;;
  il11) train fcn8s_il11_ema_w8_16k "$@" ;;
  il-ema) train fcn8s_il_ema_w8_16k "$@" ;;
  il) train fcn8s_il_w8 "$@" ;;
  mf) train fcn8s_mf_w8 "$@" ;;
  plain) train fcn8s_plain_w8 "$@" ;;
  w4) train fcn8s_mf_w4 "$@" ;;
  road) train road_fcn8s "$@" ;;
  32s-16s-8s) for stage in fcn32s fcn16s fcn8s; do train $stage "$@"; done ;;
  atonce) train fcn8s_atonce "$@" ;;
  control) train fcn32s_continued "$@" ;;
  screen)  # screen CONFIG SEED [flags]: 3000 iterations of heldout/CONFIG with --seed SEED, scored as above
    config_and_seed screen "$@"
    local amp  # a screen in bf16 is named for it, beside the float32 screens of the same config and seed
    amp=$(flag_value --amp "${@:3}") && [[ $amp != none ]] && amp=_$amp || amp=''
    heldout "$1" "$1_3k_s$2$amp" --iterations 3000 --seed "$2" "${@:3}" ;;
  seed)  # seed CONFIG SEED [flags]: the whole schedule of heldout/CONFIG with --seed SEED, scored as above
    config_and_seed seed "$@"
    heldout "$1" "$1_s$2" --seed "$2" "${@:3}" ;;
  eval)
    local threads=() value  # its one flag (it was accepted and dropped, and the scoring took every core)
    if value=$(flag_value --threads "$@"); then threads=(--threads "$value"); fi
    if [[ $# -gt 0 && ! ( $# -eq 2 && $1 == --threads ) && ! ( $# -eq 1 && $1 == --threads=* ) ]]; then
      echo "usage: scripts/camvid.sh eval [--threads N]" >&2
      exit 2
    fi
    # --overwrite: these reports are the tracked docs, regenerated on purpose
    score() { $FCNSEG eval "$1" --dataset camvid --root "$ROOT" --split val "${threads[@]}" "${@:3}" \
      --out "docs/camvid/$2" --overwrite; }
    local runs=(fcn32s fcn16s fcn8s fcn8s_atonce fcn32s_continued  # staged and its controls
      fcn8s_mf_w8 fcn8s_mf_w4 fcn8s_plain_w8 fcn8s_il_w8  # one stage, 11 classes
      fcn8s_plain_ema_w8_16k fcn8s_il_ema_w8_16k fcn8s_il11_ema_w8_16k fcn8s_il12_ema_w8_16k  # EMA, 16000 it.
      fcn8s_il12_ema_w8_16k_cutmix fcn8s_il12_ema_w4_10k_cutmix "$BEST"  # kept on the held-out drive
      short_mf short_plain short_plain_ema_warm road_fcn8s)
    for run in "${runs[@]}"; do
      weights=runs/camvid/$run/last.pth
      [[ -f $weights ]] || { echo "camvid.sh: no $weights; skipped" >&2; continue; }
      if [[ $run == road_fcn8s ]]; then
        score $weights $run --class-map '{"*": not_road, road: road}'
        continue
      fi
      score $weights $run
      if [[ $run == fcn8s_*_w[48]* ]]; then  # the one-stage 11-class runs, also with test-time flips and scales
        score $weights ${run}_tta --flip --scales 0.75 1 1.25
      fi
      if [[ $run == *_ema_* ]]; then  # the weights the average was taken of, as a checkpoint of their own
        $PYTHON -c 'import sys; from fcnseg.checkpoint import read_checkpoint, write_checkpoint
state = read_checkpoint(sys.argv[1])
state["model_state_dict"] = state.pop("train_state_dict")
write_checkpoint(state, sys.argv[2])' $weights runs/camvid/${run}_train_weights.pth
        score runs/camvid/${run}_train_weights.pth ${run}_train_weights
      fi
    done ;;
  *) local parts=best\|w4-cutmix\|cutmix\|il12\|il11\|il-ema\|plain-ema\|il\|mf\|plain\|w4\|road\|32s-16s-8s
     parts+=\|atonce\|control
     parts+=$(printf '|%s' "${HELDOUT_PARTS[@]% *}")
     echo "usage: scripts/camvid.sh $parts|screen CONFIG SEED|seed CONFIG SEED|eval [fcnseg train flags]" >&2
     exit 2 ;;
esac
}
run_part "$@"; exit
