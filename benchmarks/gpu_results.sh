#!/usr/bin/env bash
# The GPU results committed under results/: run on a GPU machine from the repository's root, with the
# machine's own torch and transformers (no network: models are shipped configs with random weights).
#
#   benchmarks/gpu_results.sh reference OUT   # the GPU tests, then the reference experiment (GPT-2, 1000 tokens)
#   benchmarks/gpu_results.sh caches OUT      # every cache implementation, then static compiled and quantized
#   benchmarks/gpu_results.sh milton OUT      # the trained tiny-milton: lossless agreement in float16, quanto int4
#
# Each step has its own time limit and is stopped with SIGINT (Ctrl-C), so a step cut short still leaves a
# valid results file with every run it finished. Logs and results are copied to OUT.
set -u
part="${1:?reference or caches}"
out="${2:?an output folder}"
mkdir -p "$out" results
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python3}"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr 'A-Z ' 'a-z-' | sed 's/^nvidia-//')

step() {  # step SECONDS LOG COMMAND...: the command's output to LOG and the terminal, stopped like Ctrl-C
    local seconds="$1" log="$2"
    shift 2
    echo "== $* (at most ${seconds} s)" | tee -a "$log"
    timeout -s INT -k 30 "$seconds" "$@" 2>&1 | tee -a "$log" | tail -n 25
    echo "== exit status ${PIPESTATUS[0]}" | tee -a "$log"
}

{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    "$python" -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} 2>&1 | tee "$out/$part.log"

case "$part" in
reference)
    step 100 "$out/$part.log" "$python" -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider
    name="results/gpt2-$gpu-reference"
    step 230 "$out/$part.log" "$python" -m kvbench run --config configs/gpt2-t4-reference.toml --weights random \
        --device cuda -o "$name.json"
    cp "$name".* "$out/"
    ;;
caches)
    name="results/cache-implementations-$gpu"
    step 150 "$out/$part.log" "$python" -m kvbench run --config configs/cache-implementations-gpu.toml -o "$name.json"
    step 100 "$out/$part.log" "$python" -m kvbench run --config configs/cache-implementations-gpu.toml \
        --cache-implementation static --compile -o "$name-static-compiled.json"
    step 100 "$out/$part.log" "$python" -m kvbench run --config configs/cache-implementations-gpu.toml \
        --cache-implementation quantized --quantized-nbits 4 -o "$name-quantized-int4.json"
    cp "$name"*.json "$out/"
    ;;
milton)
    # The trained tiny-milton, where output agreement means something: is a lossless cache still
    # token-identical in float16 on a GPU's kernels? Then whether quanto's int4 cache runs there at all.
    name="results/cache-implementations-tiny-milton-$gpu"
    step 100 "$out/$part.log" "$python" -m kvbench run -m tiny-milton --prompt "Of Mans First Disobedience, and the Fruit" \
        -n 128 -n 384 --cache-implementation dynamic --cache-implementation static --modes cached -r 3 -w 1 \
        --device cuda --dtype float16 --isolation none -o "$name.json"
    step 60 "$out/$part.log" "$python" -m kvbench run -m tiny-milton --prompt "Of Mans First Disobedience, and the Fruit" \
        -n 128 --cache-implementation quantized --quantized-nbits 4 --quantized-residual-length 32 --modes cached -r 1 -w 1 \
        --device cuda --dtype float16 --isolation none --no-device-peaks -o "$name-quantized-int4.json"
    cp "$name"*.json "$out/"
    ;;
*)
    echo "usage: $0 reference|caches|milton OUT" >&2
    exit 2
    ;;
esac
