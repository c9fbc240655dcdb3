#!/usr/bin/env bash
# The CUDA part of the performance benchmark (docs/performance.md, "On CUDA") in one run: cifar10_deep with every
# rule, TF32 matmuls not allowed and allowed, the authors' costs beside them; the host syncs of a step with numerics
# checks off; imagenet_conv at 64 px and 1000 classes. About 5 minutes on one H100, so it fits one call of a lent GPU
# machine with time to spare for a rerun. Needs only torch and numpy (run it from the repository root, no install).
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
else
    deep=(--net cifar10_deep --batch 256) conv=(--net imagenet_conv --image-size 64 --classes 1000 --batch 128)
    reps=(--repeats 20 --steps 5 --warmup 3) tf32=both
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
