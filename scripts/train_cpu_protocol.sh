#!/bin/sh
# The issue's CPU protocol for both presets (imgsz 320, 30 epochs, batch 16, SGD lr 0.01, seed 0), as run
# for models/README.md on the 2-core dev machine. Resumable: run it again after an interruption and each
# run continues exactly from its last.pt. Logs in runs/PRESET-320-e30.log.
cd "$(dirname "$0")/.."
mkdir -p runs
for P in G baseline; do
  OUT=runs/train/$P-320-e30
  nohup .venv/bin/python -m training train --preset $P --imgsz 320 --epochs 30 --batch 16 --seed 0 --device cpu --data "${FALLDET_DATA:-../shared/data}/fall-action/data.yaml" \
      --workers 1 --out $OUT --no-progress $( [ -f $OUT/last.pt ] && echo --resume ) >> runs/$P-320-e30.log 2>&1 &
  echo "$P: pid $! (log runs/$P-320-e30.log)"
done
