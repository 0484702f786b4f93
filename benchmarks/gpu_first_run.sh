#!/usr/bin/env bash
# kvbench on a fresh GPU machine in at most 15 minutes (900 s), the paths that have never run on a GPU
# first: each step has its own time limit (their sum is the plan's budget, at most 900 s), prints PASS,
# FAIL or SKIP (with why), and writes its log and results to one folder, with summary.txt. Needs CUDA
# torch and this checkout; no network (the models are shipped configs with random weights; carry the
# optimum-quanto and hqq wheels, installed, for the quantized steps).
#
#   benchmarks/gpu_first_run.sh [--quick] [--dry-run] [--out DIR]
#
# --dry-run prints the GPU plan (each step's name and seconds, in the order they run, and their sum) and
# runs nothing. Without a CUDA device the GPU steps are skipped by name and the rest run on the CPU;
# --quick makes those small (what the test suite runs).
set -u

budget=900
quick=0
dry=0
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --dry-run) dry=1 ;;
        --out) out="$2"; shift ;;
        *) echo "usage: $0 [--quick] [--dry-run] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
passed=0 failed=0 skipped=0 planned=0 gpu=1
deadline=$((SECONDS + budget))
if [ "$dry" = 1 ]; then
    out=/dev/null summary=/dev/null
else
    out="${out:-gpu-first-run-$(date -u +%Y%m%d-%H%M%S)}"
    mkdir -p "$out" && out="$(cd "$out" && pwd)" || exit 2
    summary="$out/summary.txt"
    : >"$summary"
fi
cd "$(dirname "$0")/.." || exit 2
python="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

report() {  # report STATUS NAME [WHY]
    local line="$1 $2${3:+: $3}"
    echo "$line" | tee -a "$summary"
    case "$1" in PASS) passed=$((passed + 1)) ;; FAIL) failed=$((failed + 1)) ;; SKIP) skipped=$((skipped + 1)) ;; esac
}

step() {  # step NAME SECONDS COMMAND...: its output in NAME.log, PASS on exit status 0, stopped like Ctrl-C
    # at its limit (kvbench then saves what it measured); never past the plan's whole budget.
    local name="$1" seconds="$2"
    shift 2
    if [ "$dry" = 1 ]; then
        planned=$((planned + seconds))
        echo "PLAN $name $seconds"
        return
    fi
    # The plan's limits are a GPU's; a CPU (no part of the 15-minute plan, often shared) gets four times them.
    [ "$gpu" = 1 ] || seconds=$((seconds * 4))
    local left=$((deadline - SECONDS))
    [ "$gpu" = 1 ] || left=$seconds
    if [ "$left" -lt 5 ]; then
        report SKIP "$name" "the plan's ${budget} s are spent"
        return
    fi
    [ "$seconds" -gt "$left" ] && seconds="$left"
    if timeout -s INT -k 10 "$seconds" "$@" >"$out/$name.log" 2>&1; then
        report PASS "$name"
    else
        local code=$?
        local why="exit status $code"
        { [ "$code" = 124 ] || [ "$code" = 137 ]; } && why="over its ${seconds} s limit"
        report FAIL "$name" "$why; last line: $(tail -n 1 "$out/$name.log")"
    fi
}

skip() {  # skip NAME SECONDS WHY: a step this machine cannot run (planned all the same)
    if [ "$dry" = 1 ]; then step "$1" "$2"; else report SKIP "$1" "$3"; fi
}

# The checks of a results file, in Python: CHECK=name python check_result.py FILE.
[ "$dry" = 1 ] || cat >"$out/check_result.py" <<'PYTHON'
import json, os, sys

result = json.load(open(sys.argv[1]))
check = os.environ["CHECK"]
cells, runs = result["cells"], result["runs"]


def mean(values):
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


def measured(cells):
    states = [(cell["id"], cell["status"], cell["reason"]) for cell in cells]
    assert all(cell["status"] == "measured" for cell in cells), states


if check == "measured":
    # Every cell measured: with each cell's seconds per token and phases, for a person to read.
    for cell in cells:
        latencies = [r["latency_s"] / r["new_tokens"] for r in runs if r["cell"] == cell["id"] and r["mode"] == "cached"]
        print(cell["id"], cell["status"], cell["kv_cache_class"], "cached s/token", mean(latencies), "phases", cell.get("phases_s"))
    measured(cells)
elif check == "quantized":
    # The quantized cells measured, their backend's kernels built before them (a phase of their own).
    for cell in cells:
        print(cell["id"], cell["status"], cell["reason"], cell["kv_cache_class"], cell["kv_cache_note"], cell.get("phases_s"))
    measured(cells)
    quantized = [cell for cell in cells if cell["settings"]["cache_implementation"] == "quantized"]
    assert quantized, "no quantized cell"
    if os.environ.get("BACKEND") == "quanto":
        assert any("kernel_build" in (cell.get("phases_s") or {}) for cell in cells), "no kernel_build phase"
elif check == "prefix":
    measured(cells)
    modes = {r["mode"] for r in runs}
    copies = [r["prefix_copy_s"] for r in runs if r["mode"] == "prefix"]
    print("modes", sorted(modes), "prefix copies (s):", copies[:6])
    assert modes == {"cached", "prefix"}, modes
    assert copies and all(copy is not None for copy in copies), "a prefix run without its copy's time"
elif check == "batch":
    measured(cells)
    print("batches and prefill tokens:", sorted({(r["batch_size"], r["prompt_tokens"], r.get("prefill_tokens")) for r in runs}))
    assert {r["batch_size"] for r in runs} == {1, 4}, "not both batch 1 and batch 4"
elif check == "measured-cache":
    cell = cells[0]
    print(cell["kv_cache_class"], "measured", cell["kv_cache_measured_bytes"], "theory", cell["kv_cache_theory_bytes"])
    assert cell["status"] == "measured", cell["status"]
    assert cell["kv_cache_agrees"] is True, cell["kv_cache_note"]
elif check == "cache-in-allocated-bytes":
    cache, first = cells[0]["kv_cache_theory_bytes"], cells[0]["id"]
    peak = {
        mode: mean(r["torch_peak_allocated_bytes"] for r in runs if r["mode"] == mode and r["cell"] == first)
        for mode in ("cached", "uncached")
    }
    difference = peak["cached"] - peak["uncached"]
    print(f"peak allocated: cached {peak['cached']:.0f} B, uncached {peak['uncached']:.0f} B; difference {difference:.0f} B,"
          f" cache {cache} B, ratio {difference / cache:.3f}")
    assert 0.5 <= difference / cache <= 1.5, "the cached mode's extra allocation is not the cache's size"
elif check == "vram-peaks":
    pairs = [(r["vram_device_baseline_bytes"], r["vram_device_peak_bytes"]) for r in runs]
    print("baseline, peak per run:", pairs)
    assert all(base is not None and peak is not None for base, peak in pairs), "NVML gave no VRAM figures"
    assert all(peak >= base for base, peak in pairs), "a peak below its baseline"
elif check == "energy":
    energies = [r["energy_j"] for r in runs]
    reason = result.get("unmeasured", {}).get("energy")
    print("energy per run (J):", energies, "| not measured because:", reason)
    assert all(energy is not None for energy in energies) or reason, "energy neither measured nor explained"
elif check == "oom-then-measured":
    states = [cell["status"] for cell in cells]
    print("cells:", [(cell["settings"]["batch_size"], cell["status"], cell["reason"]) for cell in cells])
    assert states == ["oom", "measured"], states
    assert runs and all(r["batch_size"] == 1 for r in runs), "the failed cell kept runs"
elif check == "between-cells":
    # From one cell's last timed run to the next cell's first warmup: the first's output comparison and
    # saves, then whatever the second had to start (a process, imports, a model load, the samplers).
    after, before = ("output_comparison", "save"), ("process_start", "imports", "model_load", "device_setup")
    gaps = [
        sum((first.get("phases_s") or {}).get(p, 0) for p in after) + sum((second.get("phases_s") or {}).get(p, 0) for p in before)
        for first, second in zip(cells, cells[1:])
    ]
    print("seconds between cells:", [round(gap, 2) for gap in gaps], "processes:", [cell["ran_on"]["pids"] for cell in cells])
    assert all(cell["status"] == "measured" for cell in cells), [cell["status"] for cell in cells]
    assert len({pid for cell in cells for pid in cell["ran_on"]["pids"]}) == 1, "the model's cells did not share a process"
    # The GPU's target; on a CPU the figures are read, not judged (a shared machine's seconds are noise).
    limit = os.environ.get("BETWEEN_CELLS_LIMIT_S")
    assert limit is None or max(gaps) <= float(limit), f"more than {limit} s between cells"
PYTHON

checked() {  # checked NAME FILE CHECK: the results file's check, when the run made the file
    local name="$1" file="$2" check="$3"
    if [ "$dry" = 1 ] || [ -f "$file" ]; then
        CHECK="$check" step "$name" 5 "$python" "$out/check_result.py" "$file"
    else
        report FAIL "$name" "no results file $file (see the run's log)"
    fi
}

if [ "$dry" = 1 ]; then
    gpu=1
elif "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    gpu=1
else
    gpu=0
    echo "No CUDA device: GPU steps are skipped; the rest run on the CPU." | tee -a "$summary"
fi
no_gpu="no CUDA device here"
if [ "$gpu" = 1 ]; then device=cuda; else device=cpu; fi
kvbench=("$python" -m kvbench)

# 1. Identification: NVML's UUID is torch's, its capability, driver and memory.
identify='
import torch
from kvbench.hardware import nvml
properties = torch.cuda.get_device_properties(0)
uuids, reason = nvml.gpu_uuids(["cuda:0"])
assert reason is None, reason
facts = nvml.gpu_facts("cuda:0", properties)
torch_uuid = getattr(properties, "uuid", None)
print(properties.name, "capability", torch.cuda.get_device_capability(0), "memory", properties.total_memory,
      "driver", facts.get("gpu_driver"), "NVML", uuids["cuda:0"], "torch", torch_uuid, "facts", facts)
assert torch_uuid is None or uuids["cuda:0"].endswith(str(torch_uuid)), "NVML and torch name different GPUs"
'
if [ "$gpu" = 1 ]; then step identify 20 "$python" -c "$identify"; else skip identify 20 "$no_gpu"; fi

# 2-3. The quantized caches, never measured on a GPU: TinyLlama-1.1B's architecture in bfloat16 at 2,048
# positions, int4, beside the dynamic cache. quanto builds its CUDA kernels first, in a phase of its own.
quantized=(-m tinyllama-1.1b --weights random --dtype bfloat16 --prompt-tokens 1920 -n 128 --modes cached -r 3 -w 1
    --cache-implementation dynamic --cache-implementation quantized --quantized-nbits 4 --device cuda)
for backend in quanto hqq; do
    if [ "$backend" = quanto ]; then seconds=160 module=optimum.quanto; else seconds=60 module=hqq; fi
    if [ "$gpu" = 0 ]; then
        skip "quantized-$backend-run" "$seconds" "$no_gpu"
        skip "quantized-$backend-measured" 5 "$no_gpu"
    elif [ "$dry" = 0 ] && ! "$python" -c "import $module" 2>/dev/null; then
        skip "quantized-$backend-run" "$seconds" "$module is not installed (carry its wheel)"
        skip "quantized-$backend-measured" 5 "$module is not installed"
    else
        step "quantized-$backend-run" "$seconds" "${kvbench[@]}" run "${quantized[@]}" --quantized-backend "$backend" \
            --output "$out/quantized-$backend.json"
        BACKEND="$backend" checked "quantized-$backend-measured" "$out/quantized-$backend.json" quantized
    fi
done

# 4. Every cache implementation at 512 new tokens, offloaded_static among them (never measured on a GPU).
if [ "$gpu" = 1 ]; then
    step caches-512-run 100 "${kvbench[@]}" run --config configs/cache-implementations-gpu.toml -n 512 -r 2 -w 1 \
        --output "$out/caches-512.json"
    checked caches-512-measured "$out/caches-512.json" measured
else
    skip caches-512-run 100 "$no_gpu (offloading needs a GPU)"
    skip caches-512-measured 5 "$no_gpu"
fi

# 5-6. Prefix reuse and real batches on a GQA model in bfloat16 at 4k-32k positions (on a CPU, short and
# in float32).
if [ "$gpu" = 1 ]; then
    long=(--dtype bfloat16 --prompt-tokens 4096 --prompt-tokens 32736) prefix=(--prefix-tokens 4000 --prefix-tokens 32700)
    batch=(--dtype bfloat16 --prompt-tokens 4096 --prompt-tokens 32736) new=(-n 64 -r 3 -w 1)
else
    long=(--prompt-tokens 256) prefix=(--prefix-tokens 200) batch=(--prompt-tokens 256) new=(-n 8 -r 2 -w 1)
fi
step prefix-run 60 "${kvbench[@]}" run -m tiny-gqa-32k --weights random "${long[@]}" "${prefix[@]}" --modes cached,prefix \
    "${new[@]}" --device "$device" --output "$out/prefix.json"
checked prefix-measured "$out/prefix.json" prefix
step batch-run 45 "${kvbench[@]}" run -m tiny-gqa-32k --weights random "${batch[@]}" -b 1 -b 4 --ragged "${new[@]}" \
    --device "$device" --output "$out/batch.json"
checked batch-measured "$out/batch.json" batch

# 7. Capacity against the device's memory: the longest context at batch 1 and the largest batch at 4,096
# tokens, found by running out of memory, beside the what-fits extrapolation.
if [ "$gpu" = 1 ]; then
    step capacity 90 "${kvbench[@]}" capacity -m tiny-gqa-32k --weights random --dtype bfloat16 -d cuda --context 4096 \
        --resolution 1/8 --output "$out/capacity.json"
    grep -s -i "fits\|largest\|longest" "$out/capacity.log" | head -n 8 | sed 's/^/    capacity: /' | tee -a "$summary"
else
    skip capacity 90 "$no_gpu (on a CPU it needs a --memory-budget; tests/test_capacity.py runs it)"
fi

# 8. A sweep's time between cells (one process serves the model's cells): at most 3 s on GPT-2; the same
# file's cache bytes, allocations, VRAM peaks and energy.
if [ "$gpu" = 1 ] || [ "$quick" = 0 ]; then model=gpt2 runs=3; else model=tiny-gpt2 runs=2; fi
step sweep-run 40 "${kvbench[@]}" run -m "$model" --weights random -n 32 -n 64 -n 128 -r "$runs" --device "$device" \
    --output "$out/sweep.json"
[ "$gpu" = 1 ] && export BETWEEN_CELLS_LIMIT_S=3
checked sweep-between-cells "$out/sweep.json" between-cells
[ "$dry" = 1 ] || grep -s "^seconds between cells" "$out/sweep-between-cells.log" | sed 's/^/    /' | tee -a "$summary"
checked cache-bytes-equal-theory "$out/sweep.json" measured-cache
checked energy-measured-or-explained "$out/sweep.json" energy
if [ "$gpu" = 1 ]; then
    checked cached-minus-uncached-is-the-cache "$out/sweep.json" cache-in-allocated-bytes
    checked vram-peaks-above-baselines "$out/sweep.json" vram-peaks
else
    skip cached-minus-uncached-is-the-cache 5 "$no_gpu (torch's allocator counts CUDA memory only)"
    skip vram-peaks-above-baselines 5 "$no_gpu"
fi

# 9. kvbench's own overhead against a bare generate() loop: its verdicts (the 1% criterion) go to the
# summary for a person to read; PASS when it ran.
if [ "$gpu" = 1 ]; then
    step overhead 50 "$python" benchmarks/overhead.py --device cuda --rounds 1 --runs 4
elif [ "$quick" = 1 ]; then
    step overhead 50 "$python" benchmarks/overhead.py --device cpu --model tiny-gpt2 --new-tokens 8 --rounds 1 --runs 2
else
    step overhead 50 "$python" benchmarks/overhead.py --device cpu --new-tokens 24 --rounds 1 --runs 2
fi
[ "$dry" = 1 ] || grep -s "^kvbench" "$out/overhead.log" | sed 's/^/    overhead: /' | tee -a "$summary"

# 10. The gate end to end on two commits (this one and the one before), the CI config on this GPU.
if [ "$gpu" = 0 ]; then
    skip gate 100 "$no_gpu (tests/test_ci_gate.py runs the gate on a CPU)"
elif [ "$dry" = 0 ] && ! git rev-parse -q --verify HEAD~1 >/dev/null 2>&1; then
    skip gate 100 "no git history here (the gate compares two commits)"
else
    # The gate refuses a folder inside the head checkout (this one), where --out may lie: its own, copied after.
    gate_out="$([ "$dry" = 1 ] || mktemp -d "${TMPDIR:-/tmp}/kvbench-first-run-gate.XXXXXX")"
    step gate 100 "${kvbench[@]}" gate --base HEAD~1 --head . --install pythonpath --config configs/ci-gpu.toml \
        --run-args "--max-new-tokens 32 --runs 2 --warmup 1" --out "$gate_out/gate"
    [ "$dry" = 1 ] || { mkdir -p "$out/gate" && cp "$gate_out"/gate/*.json "$gate_out"/gate/*.md "$out/gate/" 2>/dev/null; }
fi

# 11. The GPU tests.
if [ "$gpu" = 1 ]; then
    step gpu-tests 50 "$python" -m pytest -m gpu -q -p no:cacheprovider
else
    skip gpu-tests 50 "$no_gpu (pytest -m gpu would skip every one)"
fi

# 12. An out-of-memory cell, then a measured one, in one sweep. On a GPU, batch 200000 asks for far more
# than any GPU holds at its first step; on a CPU, the tests' fault injector (tests/faults) plays the
# out-of-memory error in the measuring process (a real one would take the machine's memory from everyone).
if [ "$gpu" = 1 ]; then
    step oom-sweep 30 "${kvbench[@]}" run -m gpt2 --weights random -n 8 -r 2 --batch-size 200000 --batch-size 1 \
        --device cuda --output "$out/oom.json"
else
    mkdir -p "$out/faults-struck"
    KVBENCH_TEST_FAULT="oom@batch=2 " KVBENCH_TEST_FAULT_STRUCK="$out/faults-struck" \
        PYTHONPATH="$PWD/tests/faults:$PYTHONPATH" step oom-sweep 30 "${kvbench[@]}" run -m tiny-gpt2 --weights random \
        -n 8 -r 2 --batch-size 2 --batch-size 1 --isolation process --device cpu --output "$out/oom.json"
fi
checked oom-then-measured "$out/oom.json" oom-then-measured

if [ "$dry" = 1 ]; then
    echo "budget $planned s of $budget s"
    [ "$planned" -le "$budget" ]
    exit
fi
echo "$passed passed, $failed failed, $skipped skipped; files in $out" | tee -a "$summary"
[ "$failed" = 0 ]
