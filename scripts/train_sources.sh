#!/bin/sh
# Issue 18's protocol on the 2-core CPU: the pretrained-backbone preset and the paper's G from scratch,
# same data (training/configs/all-sources.yaml, equal source shares), same budget (12 epochs of 2000
# drawn samples at 320, batch 16, SGD lr 0.01, seed 0), one after the other so each has both cores.
# Resumable: run it again after an interruption and each run continues from its last.pt.
# Logs in runs/<run>.log; results in runs/train/<run>/ (results.csv, best.pt, metrics.json).
cd "$(dirname "$0")/.."
mkdir -p runs
# passive OpenMP waits: a thread that finds no free core sleeps instead of spinning (shared 2-core machines)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export FALLDET_DATA="${FALLDET_DATA:-$(cd .. && pwd)/shared/data}"
for P in G-mnv2 G; do
  RUN=$P-sources-320-e12
  OUT=runs/train/$RUN
  [ -f $OUT/metrics.json ] && continue
  .venv/bin/python -m training train --preset $P --data training/configs/all-sources.yaml --imgsz 320 \
      --epochs 12 --epoch-size 2000 --batch 16 --close-mosaic 4 --val-interval 2 --camera-aug --seed 0 \
      --device cpu --workers 1 --out $OUT --no-progress $( [ -f $OUT/last.pt ] && echo --resume ) >> runs/$RUN.log 2>&1
done
