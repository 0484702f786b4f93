"""The measurement loop and the only caller of generate(): warmup, interleaved cached/uncached runs of
exactly the requested new tokens, per-token arrival times, memory, and the results file kept current."""

from __future__ import annotations

import gc
import importlib.util
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kvbench import __version__
from kvbench.config import BenchConfig, Cell, config_to_dict, expand, run_limits, validate
from kvbench.errors import KvbenchError
from kvbench.kvsize import cache_bytes_for
from kvbench.memory import MemoryProbe
from kvbench.stats import relative_standard_error
from kvbench.results import (
    BenchmarkResult,
    CellResult,
    RunRecord,
    check_writable,
    read_result,
    write_result,
)

# Cell states that --resume keeps rather than measures again.
FINISHED_STATES = ("measured", "skipped", "oom")
# Settings that must agree for --resume to add to an existing file.
RESUME_MUST_MATCH = (
    "weights", "prompt", "prompt_tokens", "modes", "runs", "target_rse", "min_runs", "max_runs", "warmup",
    "device", "seed",
)


class Observer:
    """Progress hooks for a display; every hook does nothing by default, so library callers need none."""

    def planned(self, generations: int) -> None: ...

    def cell_started(self, cell: CellResult, index: int, count: int) -> None: ...

    def generation_started(self, label: str, new_tokens: int) -> None: ...

    def token(self) -> None: ...

    def generation_finished(self) -> None: ...

    def cell_finished(self, cell: CellResult) -> None: ...


class TokenClock:
    """A generate() streamer that notes when each new token arrives. generate() hands it the prompt
    first, then one batch of tokens per step, on the same call that is being timed."""

    def __init__(self, on_token: Any) -> None:
        self._on_token = on_token
        self.times_s: list[float] = []
        self._start = 0.0
        self._prompt_seen = False

    def begin(self) -> None:
        self.times_s = []
        self._prompt_seen = False
        self._start = time.perf_counter()

    def put(self, value: Any) -> None:
        now = time.perf_counter()
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times_s.append(now - self._start)
        self._on_token()

    def end(self) -> None:
        pass


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def unsupported_reason(cell: Cell, device: str) -> str | None:
    """Why this machine cannot run a cell's cache implementation, known before trying."""
    if cell.cache_implementation in ("offloaded", "offloaded_static") and not device.startswith("cuda"):
        return f"cache_implementation={cell.cache_implementation} offloads to a GPU and needs a CUDA device"
    if cell.cache_implementation == "quantized" and not _installed("optimum.quanto"):
        return "cache_implementation=quantized needs optimum-quanto (pip install optimum-quanto)"
    if cell.attn_implementation == "flash_attention_2" and not _installed("flash_attn"):
        return "attn_implementation=flash_attention_2 needs the flash-attn package"
    return None


def first_divergence(a: Any, b: Any) -> int | None:
    """Index of the first generated position where two (batch, tokens) id tensors differ, or None."""
    differs = (a != b).any(dim=0).nonzero()
    return int(differs[0]) if differs.numel() else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError))


class Benchmark:
    """One `kvbench run`: plans the cells, checks everything it can before measuring, then measures,
    saving the results file after every generation."""

    def __init__(
        self,
        config: BenchConfig,
        output: str | Path | None = None,
        observer: Observer | None = None,
        command: str | None = None,
        resume: bool = False,
    ) -> None:
        from kvbench import environment, models

        validate(config)
        self.config = config
        self.observer = observer or Observer()
        self.output = check_writable(output) if output is not None else None
        self.device = models.resolve_device(config.device)
        self.cells = expand(config)
        self.result = BenchmarkResult(
            environment=environment.collect(self.device),
            config=config_to_dict(config),
            command=command,
            started_at=_now(),
            kvbench_version=__version__,
            cells=[CellResult(id=cell.id, settings=asdict(cell)) for cell in self.cells],
        )
        if resume:
            self._carry_over_finished_cells()
        self._prepare_models()
        self._loaded: tuple[tuple[str, str, str], Any] | None = None
        self.probe: MemoryProbe | None = None

    def _carry_over_finished_cells(self) -> None:
        if self.output is None:
            raise KvbenchError("--resume needs --output naming the results file to continue")
        if not self.output.exists():
            return
        previous = read_result(self.output)
        defaults = BenchConfig()
        for key in RESUME_MUST_MATCH:
            # A setting the file predates had its default value then.
            before = previous.config.get(key, getattr(defaults, key))
            if before != getattr(self.config, key):
                raise KvbenchError(
                    f"--resume: {self.output} was made with {key}={before!r}, not"
                    f" {getattr(self.config, key)!r}; use the same settings or a new --output"
                )
        kept = {cell.id: cell for cell in previous.cells if cell.status in FINISHED_STATES}
        self.result.cells = [kept.get(cell.id, cell) for cell in self.result.cells]
        self.result.runs = [run for run in previous.runs if run.cell in kept]
        self.result.started_at = previous.started_at
        self.result.notes = list(previous.notes)

    def _prepare_models(self) -> None:
        """Resolve every model and check every cell's length before any generation, so a mistake in
        the last cell of a sweep is not found after hours of measuring."""
        from kvbench import models

        self.prepared = {name: models.prepare_model(name, self.config.weights) for name in self.config.model}
        self.prompts = {}
        for name, prepared in self.prepared.items():
            ids, how = models.prompt_ids(prepared, self.config.prompt, self.config.prompt_tokens, self.config.seed)
            self.prompts[name] = (ids, how)
            for note in prepared.notes:
                if note not in self.result.notes:
                    self.result.notes.append(note)
        for cell in self.cells:
            models.check_context(self.prepared[cell.model], len(self.prompts[cell.model][0]), cell.max_new_tokens)

    def save(self) -> None:
        self.result.updated_at = _now()
        if self.output is not None:
            write_result(self.result, self.output)

    def _pending(self) -> list[tuple[Cell, CellResult]]:
        return [
            (cell, record)
            for cell, record in zip(self.cells, self.result.cells)
            if record.status not in FINISHED_STATES
        ]

    def run(self) -> BenchmarkResult:
        pending = self._pending()
        per_cell = (run_limits(self.config)[1] + self.config.warmup) * len(self.config.modes)
        self.observer.planned(per_cell * len(pending))
        self.save()
        try:
            for index, (cell, record) in enumerate(pending):
                self.observer.cell_started(record, index, len(pending))
                self._run_cell(cell, record)
                self.save()
                self.observer.cell_finished(record)
        except KeyboardInterrupt:
            # Ctrl-C may land between a measurement and its save: keep everything measured so far.
            self.save()
            raise
        finally:
            if self.probe is not None:
                self.probe.close()
        self.result.complete = True
        self.save()
        return self.result

    def _model_for(self, cell: Cell) -> Any:
        from kvbench import models

        key = (cell.model, cell.dtype, cell.attn_implementation)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None
            self._free_memory()
            loaded = models.build_model(
                self.prepared[cell.model],
                dtype=cell.dtype,
                attn_implementation=cell.attn_implementation,
                device=self.device,
                seed=self.config.seed,
                device_map=self.config.device_map,
            )
            self._loaded = (key, loaded)
            # Memory is measured on every device the model occupies, known only once it is loaded.
            if self.probe is not None:
                self.probe.close()
            self.probe = MemoryProbe(
                loaded.devices, self.config.sample_interval_ms / 1000, self.config.memory_sampling
            )
        return self._loaded[1]

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _run_cell(self, cell: Cell, record: CellResult) -> None:
        reason = unsupported_reason(cell, self.device)
        if reason is not None:
            record.status, record.reason = "skipped", reason
            return
        # An interrupted cell is measured again from its start, so its runs stay interleaved.
        self.result.runs = [run for run in self.result.runs if run.cell != cell.id]
        failure: tuple[str, str] | None = None
        try:
            loaded = self._model_for(cell)
            ids, how = self.prompts[cell.model]
            record.model = loaded.info()
            record.prompt_tokens, record.prompt_source = len(ids), how
            record.kv_cache_bytes = cache_bytes_for(
                loaded.model.config, len(ids) + cell.max_new_tokens, cell.batch_size, loaded.dtype
            )
            record.status = "incomplete"
            self._measure_cell(cell, record, loaded, ids)
        except KvbenchError:
            raise
        except Exception as error:  # noqa: BLE001 - a sweep records a failing cell and goes on
            size = f"batch {cell.batch_size} x {cell.max_new_tokens} new tokens"
            if _is_out_of_memory(error):
                failure = ("oom", f"out of memory at {size} ({type(error).__name__})")
            elif len(self.cells) > 1:
                failure = ("error", f"{type(error).__name__}: {error}")
            else:
                raise
        if failure is None:
            record.status = "measured"
            return
        # Freed only now: until the except block ends, its traceback keeps the failed run's tensors alive.
        record.status, record.reason = failure
        self.result.runs = [run for run in self.result.runs if run.cell != cell.id]
        self._loaded = None
        self._free_memory()

    def _measure_cell(self, cell: Cell, record: CellResult, loaded: Any, ids: Any) -> None:
        import torch

        from kvbench.timing import make_timer

        config = self.config
        model, devices = loaded.model, loaded.devices
        input_ids = ids.unsqueeze(0).repeat(cell.batch_size, 1).to(devices[0])
        attention_mask = torch.ones_like(input_ids)
        pad_token_id = _pad_token_id(model)
        clock = TokenClock(self.observer.token)
        timed = make_timer(devices)

        def generate(mode: str) -> Any:
            kwargs: dict[str, Any] = {}
            if mode == "cached" and cell.cache_implementation != "dynamic":
                kwargs["cache_implementation"] = cell.cache_implementation
            clock.begin()
            return model.generate(
                input_ids,
                attention_mask=attention_mask,
                max_new_tokens=cell.max_new_tokens,
                # Greedy and forced to full length: an early end-of-sequence would shorten one mode only.
                min_new_tokens=cell.max_new_tokens,
                do_sample=False,
                use_cache=mode == "cached",
                pad_token_id=pad_token_id,
                streamer=clock,
                **kwargs,
            )

        for warmup in range(config.warmup):
            for mode in config.modes:
                self.observer.generation_started(f"warmup {mode} {warmup + 1}/{config.warmup}", cell.max_new_tokens)
                generate(mode)
                self.observer.generation_finished()

        first_outputs: dict[str, Any] = {}
        fewest, most = run_limits(config)
        # Interleaved (cached, uncached, cached, ...) so drift in the machine's speed hits both modes alike.
        for run in range(most):
            if run >= fewest and self._precise_enough(cell, record):
                break
            for mode in config.modes:
                self.observer.generation_started(f"{mode} {run + 1}/{most}", cell.max_new_tokens)
                self.probe.start()
                output, latency_s = timed(lambda: generate(mode))
                memory = self.probe.stop()
                new_ids = output[:, input_ids.shape[1] :]
                if new_ids.shape[1] != cell.max_new_tokens or len(clock.times_s) != cell.max_new_tokens:
                    raise RuntimeError(
                        f"generate() produced {new_ids.shape[1]} new tokens ({len(clock.times_s)} streamed),"
                        f" not {cell.max_new_tokens}"
                    )
                first_outputs.setdefault(mode, new_ids.cpu())
                self.result.runs.append(
                    RunRecord(
                        cell=cell.id,
                        mode=mode,
                        run=run,
                        latency_s=latency_s,
                        new_tokens=cell.max_new_tokens,
                        prompt_tokens=input_ids.shape[1],
                        batch_size=cell.batch_size,
                        tokens_per_s=cell.max_new_tokens * cell.batch_size / latency_s,
                        time_to_first_token_s=clock.times_s[0] if clock.times_s else None,
                        token_times_s=[round(t, 6) for t in clock.times_s],
                        **asdict(memory),
                    )
                )
                self.result.unmeasured = dict(self.probe.unavailable)
                self.save()
                self.observer.generation_finished()
        else:
            if config.target_rse is not None and not self._precise_enough(cell, record):
                record.stop_reason = f"stopped at the most runs ({most}) before every mode reached the target RSE"
        if len(first_outputs) == 2:
            divergence = first_divergence(first_outputs["cached"], first_outputs["uncached"])
            record.outputs_match = divergence is None
            record.first_divergence = divergence

    def _precise_enough(self, cell: Cell, record: CellResult) -> bool:
        """With --target-rse: whether every mode's mean is already known closely enough."""
        target = self.config.target_rse
        if target is None:
            return False
        errors = [
            relative_standard_error([r.latency_s for r in self.result.runs_of(cell.id, mode)])
            for mode in self.config.modes
        ]
        if all(error is not None and error <= target for error in errors):
            worst = max(e for e in errors if e is not None)
            record.stop_reason = f"every mode within the target RSE {target:.1%} (worst {worst:.2%})"
            return True
        return False


def _pad_token_id(model: Any) -> int:
    generation = model.generation_config
    for candidate in (generation.pad_token_id, generation.eos_token_id):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0


def run_benchmark(
    config: BenchConfig,
    output: str | Path | None = None,
    observer: Observer | None = None,
    command: str | None = None,
    resume: bool = False,
) -> BenchmarkResult:
    """Measure cached against uncached generation as `config` says; the results file (if `output` is
    given) is rewritten after every generation and marked complete at the end."""
    benchmark = Benchmark(config, output=output, observer=observer, command=command, resume=resume)
    return benchmark.run()
