#!/usr/bin/env bash
# kvbench's first run on a GPU machine: each check prints PASS, FAIL or SKIP (with why), and everything it
# wrote goes to one folder. Needs CUDA torch and this checkout; no network (the models are shipped configs
# with random weights). Under 9 minutes: each step has its own time limit.
#
#   benchmarks/gpu_first_run.sh [--quick] [--out DIR]
#
# Without a CUDA device the GPU steps are skipped by name and the rest run on the CPU; --quick makes the
# CPU steps small (what the test suite runs).
set -u

quick=0
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --out) out="$2"; shift ;;
        *) echo "usage: $0 [--quick] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
out="${out:-gpu-first-run-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$out" && out="$(cd "$out" && pwd)" || exit 2
cd "$(dirname "$0")/.." || exit 2
python="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

passed=0 failed=0 skipped=0
summary="$out/summary.txt"
: >"$summary"

report() {  # report STATUS NAME [WHY]
    local line="$1 $2${3:+: $3}"
    echo "$line" | tee -a "$summary"
    case "$1" in PASS) passed=$((passed + 1)) ;; FAIL) failed=$((failed + 1)) ;; SKIP) skipped=$((skipped + 1)) ;; esac
}

step() {  # step NAME SECONDS COMMAND...: its output in NAME.log, PASS on exit status 0
    local name="$1" seconds="$2"
    shift 2
    if timeout "$seconds" "$@" >"$out/$name.log" 2>&1; then
        report PASS "$name"
    else
        local code=$?
        local why="exit status $code"
        [ "$code" = 124 ] && why="over its ${seconds} s limit"
        report FAIL "$name" "$why; last line: $(tail -n 1 "$out/$name.log")"
    fi
}

# The checks of a results file, in Python: CHECK=name python check_result.py FILE.
cat >"$out/check_result.py" <<'PYTHON'
import json, os, sys

result = json.load(open(sys.argv[1]))
check = os.environ["CHECK"]
cells, runs = result["cells"], result["runs"]


def mean(values):
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


if check == "measured-cache":
    cell = cells[0]
    print(cell["kv_cache_class"], "measured", cell["kv_cache_measured_bytes"], "theory", cell["kv_cache_theory_bytes"])
    assert cell["status"] == "measured", cell["status"]
    assert cell["kv_cache_agrees"] is True, cell["kv_cache_note"]
elif check == "cache-in-allocated-bytes":
    cache = cells[0]["kv_cache_theory_bytes"]
    peak = {mode: mean(r["torch_peak_allocated_bytes"] for r in runs if r["mode"] == mode) for mode in ("cached", "uncached")}
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
elif check == "static-compiled":
    cell = cells[0]
    print(cell["status"], cell["reason"], cell["kv_cache_class"])
    assert cell["status"] == "measured", cell["reason"]
PYTHON

checked() {  # checked NAME FILE CHECK: the results file's check, when the run made the file
    local name="$1" file="$2" check="$3"
    if [ -f "$file" ]; then
        CHECK="$check" step "$name" 60 "$python" "$out/check_result.py" "$file"
    else
        report FAIL "$name" "no results file $file (see the run's log)"
    fi
}


if "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    gpu=1
    device=cuda
else
    gpu=0
    device=cpu
    echo "No CUDA device: GPU steps are skipped; the rest run on the CPU." | tee -a "$summary"
fi
no_gpu="no CUDA device here"

# 1. Identification: NVML's UUID is torch's, its capability and driver, also with the GPU named by UUID.
identify='
import torch
from kvbench.hardware import nvml
properties = torch.cuda.get_device_properties(0)
uuids, reason = nvml.gpu_uuids(["cuda:0"])
assert reason is None, reason
facts = nvml.gpu_facts("cuda:0", properties)
torch_uuid = getattr(properties, "uuid", None)
print(properties.name, "capability", torch.cuda.get_device_capability(0), "driver", facts.get("gpu_driver"),
      "NVML", uuids["cuda:0"], "torch", torch_uuid, "facts", facts)
assert torch_uuid is None or uuids["cuda:0"].endswith(str(torch_uuid)), "NVML and torch name different GPUs"
print(uuids["cuda:0"], file=open("'"$out"'/uuid.txt", "w"))
'
if [ "$gpu" = 1 ]; then
    step identify 60 "$python" -c "$identify"
    if [ -s "$out/uuid.txt" ]; then
        CUDA_VISIBLE_DEVICES="$(cat "$out/uuid.txt")" step identify-by-uuid 60 "$python" -c "$identify"
    else
        report FAIL identify-by-uuid "no UUID from the step before"
    fi
else
    report SKIP identify "$no_gpu"
    report SKIP identify-by-uuid "$no_gpu"
fi

# 2. The GPU tests.
if [ "$gpu" = 1 ]; then
    step gpu-tests 120 "$python" -m pytest -m gpu -q -p no:cacheprovider
else
    report SKIP gpu-tests "$no_gpu (pytest -m gpu would skip every one)"
fi

# 3. GPT-2, random weights, 256 new tokens x 5 runs (a tiny GPT-2 and 16 tokens on a CPU with --quick).
if [ "$gpu" = 1 ] || [ "$quick" = 0 ]; then model=gpt2 tokens=256 runs=5; else model=tiny-gpt2 tokens=16 runs=2; fi
step gpt2-run 150 "$python" -m kvbench run -m "$model" --weights random -n "$tokens" -r "$runs" --device "$device" \
    --output "$out/gpt2.json"
checked gpt2-cache-bytes-equal-theory "$out/gpt2.json" measured-cache
checked gpt2-energy-measured-or-explained "$out/gpt2.json" energy
if [ "$gpu" = 1 ]; then
    checked gpt2-cached-minus-uncached-is-the-cache "$out/gpt2.json" cache-in-allocated-bytes
    checked gpt2-vram-peaks-above-baselines "$out/gpt2.json" vram-peaks
else
    report SKIP gpt2-cached-minus-uncached-is-the-cache "$no_gpu (torch's allocator counts CUDA memory only)"
    report SKIP gpt2-vram-peaks-above-baselines "$no_gpu"
fi

# 4. An out-of-memory cell, then a measured one, in one sweep. On a GPU, batch 200000 asks for far more
# than any GPU holds at its first step; on a CPU, the tests' fault injector (tests/faults) plays the
# out-of-memory error in the measuring process (a real one would take the machine's memory from everyone).
if [ "$gpu" = 1 ]; then
    step oom-sweep 90 "$python" -m kvbench run -m gpt2 --weights random -n 8 -r 2 --batch-size 200000 --batch-size 1 \
        --device cuda --output "$out/oom.json"
else
    mkdir -p "$out/faults-struck"
    KVBENCH_TEST_FAULT="oom@batch=2 " KVBENCH_TEST_FAULT_STRUCK="$out/faults-struck" \
        PYTHONPATH="$PWD/tests/faults:$PYTHONPATH" step oom-sweep 90 "$python" -m kvbench run -m tiny-gpt2 --weights random -n 8 -r 2 \
        --batch-size 2 --batch-size 1 --isolation process --device cpu --output "$out/oom.json"
fi
checked oom-then-measured "$out/oom.json" oom-then-measured

# 5. kvbench's own overhead against a bare generate() loop: PASS when it ran; its figures go to the summary
# for a person to read (one short run is no verdict on a 1% target).
if [ "$gpu" = 1 ]; then
    step overhead 90 "$python" benchmarks/overhead.py --device cuda --rounds 1 --runs 4
elif [ "$quick" = 1 ]; then
    step overhead 90 "$python" benchmarks/overhead.py --device cpu --model tiny-gpt2 --new-tokens 8 --rounds 1 --runs 2
else
    step overhead 90 "$python" benchmarks/overhead.py --device cpu --new-tokens 24 --rounds 1 --runs 2
fi
grep -s "^kvbench" "$out/overhead.log" | sed 's/^/    overhead: /' | tee -a "$summary"

# 6. A sweep's time between cells (one process serves the model's cells): at most 3 s on GPT-2.
if [ "$gpu" = 1 ] || [ "$quick" = 0 ]; then model=gpt2 runs=3; else model=tiny-gpt2 runs=2; fi
step sweep-run 150 "$python" -m kvbench run -m "$model" --weights random -n 32 -n 64 -n 128 -r "$runs" --device "$device" \
    --output "$out/sweep.json"
if [ "$gpu" = 1 ]; then export BETWEEN_CELLS_LIMIT_S=3; fi
checked sweep-between-cells "$out/sweep.json" between-cells
grep -s "^seconds between cells" "$out/sweep-between-cells.log" | sed 's/^/    /' | tee -a "$summary"

# 7. The static cache, compiled.
if [ "$gpu" = 1 ]; then
    step static-compile-run 90 "$python" -m kvbench run -m gpt2 --weights random -n 64 -r 3 --cache-implementation static \
        --compile --device cuda --output "$out/static.json"
    checked static-compile-measured "$out/static.json" static-compiled
else
    report SKIP static-compile-run "$no_gpu (torch.compile on a CPU takes minutes)"
    report SKIP static-compile-measured "$no_gpu"
fi

echo "$passed passed, $failed failed, $skipped skipped; files in $out" | tee -a "$summary"
[ "$failed" = 0 ]
