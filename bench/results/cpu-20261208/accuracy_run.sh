set -x
R=raunet-fast
mkdir -p "${1:-/tmp/raunet-accuracy}"
cd "${1:-/tmp/raunet-accuracy}"
time $R demo --out demo
ls demo demo/run
$R quantize --checkpoint demo/run/best --calibration demo/data/ISIC2018_Task1-2_Training_Input --out int8 --dataset isic2018 --data-root demo/data --split test
cat int8/quantization.json
$R evaluate --checkpoint demo/run/best --dataset isic2018 --data-root demo/data --split test --out ev-fp32
$R evaluate --checkpoint demo/run/best --dataset isic2018 --data-root demo/data --split test --out ev-bf16 --fused --dtype bf16
$R evaluate --checkpoint demo/run/best --dataset isic2018 --data-root demo/data --split test --out ev-fused32 --fused --dtype fp32
$R evaluate --checkpoint int8 --dataset isic2018 --data-root demo/data --split test --out ev-int8
for d in ev-*; do echo $d; cat $d/summary.json; echo; done
