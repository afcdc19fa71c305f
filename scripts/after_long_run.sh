#!/bin/sh
# Issue 23/25: everything measured on the long run's best checkpoint, in one go (the model card's
# numbers). RUN: the run folder. Writes runs/final/: val, the evaluator's per-source figures for
# the FP32 and INT8 files, the clip tables, what each label is called, and the runtime benchmark.
set -e
cd "$(dirname "$0")/.."
export FALLDET_DATA="${FALLDET_DATA:-$(cd .. && pwd)/shared/data}"
RUN="${RUN:-runs/train/G-mnv2-ssdlite-person-320-e20}"
OLD="${OLD:-runs/old-fall-detector.onnx}"
OUT=runs/final
mkdir -p $OUT
PY=.venv/bin/python
EVAL=../shared/tools/evaluate_detector.py
cp $RUN/metrics.json $OUT/val-metrics.json  # the trainer's final per-source val of best.pt
cp $RUN/confusion_matrix.png $OUT/confusion.png
$PY -m training export --weights $RUN/best.pt --out models/fall-detector.onnx --int8 > $OUT/export.json
for M in fall-detector fall-detector.int8; do
  for S in care-home ip-cameras fall-action fall-poses; do
    $PY $EVAL models/$M.onnx "$FALLDET_DATA/$S/val" --task fall --ignore danger --json $OUT/eval-$M-$S.json > $OUT/eval-$M-$S.txt 2>&1
  done
done
$PY $EVAL $OLD "$FALLDET_DATA/fall-poses/val" --task fall --json $OUT/eval-old-fall-poses.json > $OUT/eval-old-fall-poses.txt 2>&1
for D in gmdcsa24-s1 assist-iot; do
  $PY -m service.evaluate "$FALLDET_DATA/videos/$D" --save-ndjson $OUT/clips/$D --json > $OUT/clips-$D.json 2> $OUT/clips-$D.log
  $PY -m service.evaluate "$FALLDET_DATA/videos/$D" --ndjson-dir $OUT/clips/$D > $OUT/clips-$D.txt
done
$PY scripts/label_calls.py models/fall-detector.onnx > $OUT/label_calls.txt 2>&1
$PY benchmarks/bench_runtime.py --model models/fall-detector.onnx > $OUT/bench-fp32.txt 2>&1
$PY benchmarks/bench_runtime.py --model models/fall-detector.int8.onnx > $OUT/bench-int8.txt 2>&1
$PY benchmarks/bench_runtime.py --model $OLD > $OUT/bench-old.txt 2>&1
$PY benchmarks/bench_runtime.py --model runs/pilot-onnx/person-416.onnx > $OUT/bench-416.txt 2>&1
echo done > $OUT/DONE
