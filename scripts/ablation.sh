#!/bin/sh
# Issue 26: the paper's eight rows (baseline, A..G) on the shipped model's backbone, neck, init and
# data (presets *-mnv2, --backbone-init ssdlite-person, training/configs/all-sources.yaml), each at
# one fixed short budget: EPOCHS x EPOCH_SIZE drawn samples at 320 (default 6 x 1250 = 7,500 image
# passes, linear schedule, warm-up 1 epoch, mosaic closed for the last 2, batch 16, bfloat16
# autocast), validated once, after the last epoch, on every source's full val split. Seed 0 for
# every row; seed 1 for baseline-mnv2 and G-mnv2 too, so the table shows the seed-to-seed spread.
# Rows run one at a time (two cores), the spread's four first. Resumable: run it again and it skips
# finished rows and resumes an interrupted one from its last.pt. While runs/ablation/PAUSE exists it
# waits between rows (to give the cores to another heavy job). docs/ablation.md has the table.
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export FALLDET_DATA="${FALLDET_DATA:-$(cd .. && pwd)/shared/data}"
EPOCHS="${EPOCHS:-6}"
EPOCH_SIZE="${EPOCH_SIZE:-1250}"
ROWS="${ROWS:-baseline-mnv2:0 G-mnv2:0 baseline-mnv2:1 G-mnv2:1 A-mnv2:0 B-mnv2:0 C-mnv2:0 D-mnv2:0 E-mnv2:0 F-mnv2:0}"
ROOT=runs/ablation
mkdir -p $ROOT
for row in $ROWS; do
    preset=${row%:*}; seed=${row#*:}
    out=$ROOT/$preset-s$seed
    [ -f $out/metrics.json ] && continue
    while [ -f $ROOT/PAUSE ]; do sleep 20; done
    echo "$(date -u +%FT%TZ) $preset seed $seed -> $out"
    .venv/bin/python -m training train --preset $preset --backbone-init ssdlite-person \
        --data training/configs/all-sources.yaml --imgsz 320 --epochs $EPOCHS --epoch-size $EPOCH_SIZE \
        --batch 16 --close-mosaic 2 --warmup-epochs 1 --val-interval $EPOCHS --camera-aug --bf16 \
        --seed $seed --device cpu --workers 1 --out $out --no-progress \
        $( [ -f $out/last.pt ] && echo --resume ) >> $out.log 2>&1 || { echo "$preset seed $seed failed: $out.log"; exit 1; }
done
echo "$(date -u +%FT%TZ) all rows finished"
