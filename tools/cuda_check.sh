#!/usr/bin/env bash
# The CUDA part of the performance benchmark (docs/performance.md, "On CUDA") in one run: cifar10_deep with every
# rule, TF32 matmuls not allowed and allowed, the authors' costs beside them; the host syncs of a step with numerics
# checks off; imagenet_conv at 64 px and 1000 classes; imagenet_conv at 224 px, batch 256 (its peak memory); the
# input pipeline (bench --data, pinned memory and overlapped uploads) on a folder of JPEGs written here; and the
# refusal of a batch that cannot fit. About 6 minutes on one H100, so it fits one call of a lent GPU machine. Needs
# only the package's dependencies (run it from the repository root, no install).
#
#   bash tools/cuda_check.sh                  # writes JSON and tables to $OUT, or to ./cuda_check
#   DEVICE=cpu QUICK=1 bash tools/cuda_check.sh   # the same steps on tiny settings (tests/test_bench.py runs this)
set -euo pipefail
out=${OUT:-cuda_check}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
if [[ -n "${QUICK:-}" ]]; then  # tiny nets and one repeat: checks that every step of this script still runs
    deep=(--net digits_deep --batch 16) conv=(--net cifar10_conv --width-mult 0.25 --batch 4)
    reps=(--repeats 2 --steps 1 --warmup 1) tf32=off
    big=(--net cifar10_conv --width-mult 0.25 --batch 8)
    data=(--net cifar10_shallow --batch 8) workers=0,1 jpeg=(10 3 40 30)
else
    deep=(--net cifar10_deep --batch 256) conv=(--net imagenet_conv --image-size 64 --classes 1000 --batch 128)
    reps=(--repeats 20 --steps 5 --warmup 3) tf32=both
    big=(--net imagenet_conv --image-size 224 --batch 256)
    data=(--net imagenet_conv --image-size 224 --classes 50 --batch 256) workers=0,4,8,12 jpeg=(50 12 500 375)
fi

"$py" - <<'PY' | tee "$out/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
PY

bench() {  # bench NAME ARGS...: one JSON file and its table
    local name=$1; shift
    "$py" -m sim bench --device "$device" "$@" --json > "$out/$name.json"
    "$py" -c "import json, sys; from sim.bench import format_table; print(format_table(json.load(open(sys.argv[1]))))" \
        "$out/$name.json" | tee "$out/$name.txt"
    echo
}

bench deep "${deep[@]}" "${reps[@]}" --rules bp,fa,vgp,gp --reference-cost --tf32 "$tf32"
bench deep_syncs "${deep[@]}" "${reps[@]}" --rules bp,gp --check-numerics off --tf32 off
bench conv "${conv[@]}" "${reps[@]}" --rules bp,fa,gp --reference-cost --tf32 "$tf32"
bench mem224 "${big[@]}" --repeats 3 --steps 1 --warmup 1 --rules bp,gp --tf32 off

# the input pipeline: JPEGs of smooth noise at ImageNet's usual 500 x 375 (50 classes x 12), decoded at 224 px
"$py" - "$out/jpegs" "${jpeg[@]}" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
root, classes, per, w, h = Path(sys.argv[1]), *map(int, sys.argv[2:])
g = np.random.default_rng(0)
for split, count in (("train", per), ("val", 1)):
    for c in range(classes):
        folder = root / split / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(count):
            small = g.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            Image.fromarray(small).resize((w, h), Image.BICUBIC).save(folder / f"{j}.JPEG", quality=90)
PY
"$py" -m sim bench --data --device "$device" --data-path "$out/jpegs" "${data[@]}" --rules bp --workers "$workers" \
    --repeats 3 --steps 4 --warmup 2 --json > "$out/data.json"
"$py" -c "import json, sys; from sim.bench.data import format_data_table; print(format_data_table(json.load(open(sys.argv[1]))))" \
    "$out/data.json" | tee "$out/data.txt"
echo

# a per-process batch that cannot fit is refused before the first step, with the largest that fits (CUDA only)
"$py" - "$device" <<'PY' | tee "$out/memory_check.txt"
import sys
from sim.config import validate_config
from sim.errors import ConfigError
from sim.memory import check_batch_fits
for batch in (256, 10**6):
    cfg = validate_config({"name": "fit", "network": {"preset": "imagenet_conv", "image_size": 224}, "rules": "gp",
                           "data": {"kind": "random", "classes": 1000, "input_shape": [3, 224, 224]},
                           "train": {"epochs": 1, "batch_size": batch, "eval_batch_size": 1024, "device": sys.argv[1]}})
    try:
        check_batch_fits(cfg)
        print(f"batch {batch}: fits" + ("" if sys.argv[1].startswith("cuda") else " (not checked: not CUDA)"))
    except ConfigError as exc:
        print(f"batch {batch}: {exc}")
PY
