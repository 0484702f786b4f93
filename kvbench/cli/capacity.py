"""`kvbench capacity`: the longest context and the largest batch that really fit, found by measurement, beside the
what-fits extrapolation; progress on stderr, the table on stdout."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import List, Optional

import typer

from kvbench.cli.app import EXIT_INTERRUPTED, stderr, stdout, user_errors
from kvbench.render.text import labelled


def capacity(
    model: str = typer.Option(..., "--model", "-m", metavar="TEXT", help="Hub id, local model directory or shipped config."),
    memory_budget: Optional[str] = typer.Option(
        None,
        "--memory-budget",
        metavar="SIZE",
        help="The most memory one probe may take, such as 4GiB or 1500MB: on a CPU (where it is needed) its"
        " measuring process's peak RSS, the weights and the interpreter included; on a GPU its peak GPU memory,"
        " beside not running out of the device's.",
    ),
    cache_implementation: Optional[List[str]] = typer.Option(
        None,
        "--cache-implementation",
        metavar="TEXT",
        help="A cache implementation to find the capacity of (as `kvbench run` takes them); repeat for one answer"
        " each. \\[default: dynamic]",
        show_default=False,
    ),
    device: str = typer.Option("auto", "--device", "-d", metavar="TEXT", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option(
        "auto",
        "--dtype",
        metavar="TEXT",
        help="auto (float32 on a CPU, the checkpoint's type on a GPU), float32, float16 or bfloat16.",
    ),
    attn_implementation: str = typer.Option("auto", "--attn-implementation", metavar="TEXT", help="Attention backend."),
    weights: str = typer.Option("auto", "--weights", metavar="TEXT", help="auto, pretrained or random, as for run."),
    context: Optional[int] = typer.Option(
        None,
        "--context",
        metavar="N",
        help="The prompt, in tokens, the largest batch is found at. \\[default: 1024, or what the model takes]",
        show_default=False,
    ),
    max_new_tokens: int = typer.Option(
        8, "--max-new-tokens", "-n", metavar="N", help="New tokens per probe: capacity is about what fits, not speed."
    ),
    find: Optional[List[str]] = typer.Option(
        None,
        "--find",
        metavar="TEXT",
        help="context (the longest prompt at batch 1) or batch (the largest batch at --context); repeat for both."
        " \\[default: both]",
        show_default=False,
    ),
    most_context: Optional[int] = typer.Option(
        None,
        "--most-context",
        metavar="N",
        help="The longest prompt probed. \\[default: the model's position limit]",
        show_default=False,
    ),
    most_batch: int = typer.Option(4096, "--most-batch", metavar="N", help="The largest batch probed."),
    resolution: float = typer.Option(
        1 / 64,
        "--resolution",
        metavar="SHARE",
        help="Bisect until the last fit and the first failure are this share of the fit apart (0: to the exact"
        " token or sequence). \\[default: 1/64]",
        show_default=False,
    ),
    quantized_backend: Optional[str] = typer.Option(
        None, "--quantized-backend", metavar="TEXT", help="With --cache-implementation quantized: quanto, hqq or fp8."
    ),
    quantized_nbits: Optional[List[int]] = typer.Option(
        None, "--quantized-nbits", metavar="N", help="With --cache-implementation quantized: bits; repeat for one answer each."
    ),
    quantized_residual_length: Optional[int] = typer.Option(
        None,
        "--quantized-residual-length",
        metavar="N",
        help="With --cache-implementation quantized: positions kept at full precision before they are quantized.",
    ),
    output: Optional[str] = typer.Option(
        None,
        "--output",
        "-o",
        metavar="FILE",
        help="The report as JSON, written after every probe; - for none. \\[default: results/capacity/<model>-<time>.json]",
        show_default=False,
    ),
    force: bool = typer.Option(False, "--force", metavar="", help="Replace --output if it exists. Without it, never."),
) -> None:
    """Find, by measurement, the longest context at batch 1 and the largest batch at --context that fit,
    for each cache implementation, beside the what-fits extrapolation for the same memory.

    Each probe is one generation in a measuring process: doubling until one does not fit, then bisecting.

    On a CPU a probe fits when its process's peak RSS stays within --memory-budget.

    On a GPU it fits when it does not run out of the device's memory (a fresh process follows one that does).

    Examples:

      kvbench capacity -m tiny-gqa-32k --memory-budget 2GiB

      kvbench capacity -m llama-3.1-8b -d cuda --cache-implementation dynamic --cache-implementation quantized
    """
    with user_errors():
        from kvbench.core.units import parse_bytes
        from kvbench.render.capacity import capacity_report, probe_line
        from kvbench.runner.capacity import CapacityRequest, CapacityRun, default_output

        quantized = {
            key: value
            for key, value in (
                ("quantized_backend", quantized_backend),
                ("quantized_nbits", quantized_nbits),
                ("quantized_residual_length", quantized_residual_length),
            )
            if value is not None
        }
        given = locals()
        command = shlex.join(["kvbench", "capacity", *_words(given)])
        request = CapacityRequest(
            model=model,
            device=device,
            dtype=dtype,
            caches=cache_implementation or ["dynamic"],
            attn_implementation=attn_implementation,
            weights=weights,
            memory_budget=parse_bytes(memory_budget, "--memory-budget") if memory_budget is not None else None,
            context=context,
            max_new_tokens=max_new_tokens,
            find=find or ["context", "batch"],
            most_context=most_context,
            most_batch=most_batch,
            resolution=resolution,
            quantized=quantized or None,
            output=None if output == "-" else Path(output) if output else default_output(model),
            force=force,
            command=command,
        )
        with stderr.status("loading torch and transformers, checking the model and counting its weights…"):
            from kvbench.measure.models import quiet_transformers

            quiet_transformers()
            run = CapacityRun(request, on_probe=lambda search, probe: stderr.print(probe_line(run.report, search, probe)))
        try:
            report = run.run()
        except KeyboardInterrupt:
            stdout.print(capacity_report(run.report))
            where = f"saved in {run.output}" if run.output is not None else "shown above"
            stderr.print(labelled("Interrupted.", "yellow", f"The probes measured so far are {where}."), soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        stdout.print(capacity_report(report))
        if run.output is not None:
            stdout.print(f"report: {run.output}", highlight=False)


def _words(given: dict) -> list[str]:
    """The options given, as a command line that runs the same search again (recorded in the report)."""
    words: list[str] = []
    defaults = {"device": "auto", "dtype": "auto", "attn_implementation": "auto", "weights": "auto",
                "max_new_tokens": 8, "most_batch": 4096, "resolution": 1 / 64, "force": False}  # fmt: skip
    for name in (
        "model", "memory_budget", "cache_implementation", "device", "dtype", "attn_implementation", "weights",
        "context", "max_new_tokens", "find", "most_context", "most_batch", "resolution", "quantized_backend",
        "quantized_nbits", "quantized_residual_length", "output",
    ):  # fmt: skip
        value = given.get(name)
        if value is None or defaults.get(name) == value:
            continue
        flag = "--" + name.replace("_", "-")
        for item in value if isinstance(value, list) else [value]:
            words += [flag, str(item)]
    return words
