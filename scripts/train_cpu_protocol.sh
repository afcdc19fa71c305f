#!/bin/sh
# The shortened CPU protocol actually run for the shipped model (see models/README.md): both presets
# at once, one thread each, on the 2-core dev machine. 4 epochs, no gradient accumulation (nbs = batch).
cd "$(dirname "$0")/.."
mkdir -p runs
for P in G baseline; do
  OUT=runs/train/$P-320-e4
  .venv/bin/python -m training train --preset $P --imgsz 320 --epochs 4 --close-mosaic 1 --warmup-epochs 1 \
      --batch 16 --nbs 16 --seed 0 --device cpu --workers 1 --threads 1 --out $OUT \
      $( [ -f $OUT/last.pt ] && echo --resume ) > runs/$P-320-e4.log 2>&1 &
done
wait
