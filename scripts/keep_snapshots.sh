#!/usr/bin/env bash
# keep_snapshots.sh RUN_DIR SNAP_DIR: copy RUN_DIR/last.pth into SNAP_DIR each time training rewrites it
# (every checkpoint_interval steps), until RUN_DIR/last.pth stops changing for STOP_AFTER_S seconds (default
# 1800) after the run has ended. An experiment's tool (docs/camvid.md, "averaging the weights"): the copies hold
# the training net's weights (train_state_dict) along the way, which scripts/average_snapshots.py averages.
# last.pth is replaced by a rename, so a copy always reads one whole checkpoint; each watcher copies through a
# temporary name of its own, so two watching one run only make duplicates, which the averaging counts once.
set -euo pipefail
(( $# == 2 )) || { echo "usage: scripts/keep_snapshots.sh RUN_DIR SNAP_DIR" >&2; exit 2; }
run_dir=$1 snap_dir=$2
stop_after_s=${STOP_AFTER_S:-1800}
[[ -d $run_dir ]] || { echo "keep_snapshots.sh: $run_dir is not a folder: start keep_snapshots.sh once the run has created it" >&2; exit 2; }
[[ -e $snap_dir && ! -d $snap_dir ]] && { echo "keep_snapshots.sh: $snap_dir is a file, not a folder: give the folder to copy into" >&2; exit 2; }
mkdir -p "$snap_dir"
trap 'rm -f "$snap_dir/.copy.$$"' EXIT  # a copy stopped halfway (Ctrl+C) leaves no half file
seen="" idle=0
while (( idle < stop_after_s )); do
  stamp=$(stat -c %Y.%s "$run_dir/last.pth" 2>/dev/null || true)
  if [[ -n $stamp && $stamp != "$seen" ]]; then
    cp "$run_dir/last.pth" "$snap_dir/.copy.$$" && mv "$snap_dir/.copy.$$" "$snap_dir/last_$(date +%s%N)_$$.pth"
    seen=$stamp idle=0
  else
    idle=$((idle + 10))
  fi
  sleep 10
done
