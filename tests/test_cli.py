import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvbench.cli import app
from kvbench.storage.writer import write_result
from tests.conftest import make_result

runner = CliRunner()
# Measured in this process: these tests are about the command line, and a fresh process per cell costs
# seconds of imports each (tests/test_launchers.py covers the processes).
HERE = ("--isolation", "none")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_run_prints_the_tables_and_writes_the_files(tiny_gpt2_dir, tmp_path):
    output = tmp_path / "run.json"
    result = invoke("run", "--model", tiny_gpt2_dir, "--max-new-tokens", 10, "--runs", 2, "--warmup", 0, *HERE, "-o", output)
    assert result.exit_code == 0, result.output
    assert "with KV caching: " in result.stdout and "without KV caching: " in result.stdout
    # A tiny model at 10 tokens on a busy machine may come out either way; the wording must fit.
    assert re.search(r"cached is \d+\.\d\d× (faster|slower) than uncached", result.stdout)
    assert "not measured: vram" in result.stdout
    data = json.loads(output.read_text())
    assert data["complete"] and len(data["runs"]) == 4
    assert data["command"].startswith("kvbench run --model")
    assert output.with_suffix(".csv").exists()


def test_run_takes_a_config_file_and_flags_override_it(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text('model = "tiny-llama"\nmax_new_tokens = [4, 6]\nruns = 5\nwarmup = 0\ndevice = "cpu"\n')
    output = tmp_path / "sweep.json"
    result = invoke("run", "--config", config, "--runs", 1, *HERE, "-o", output)
    assert result.exit_code == 0, result.output
    data = json.loads(output.read_text())
    assert data["config"]["runs"] == 1
    assert [cell["settings"]["max_new_tokens"] for cell in data["cells"]] == [4, 6]
    assert "RANDOM weights" in result.stdout


def test_encoder_model_is_refused(bert_dir, tmp_path):
    assert_user_error(invoke("run", "--model", bert_dir, "-o", tmp_path / "r.json"), "is an encoder", "no KV cache")


def test_unknown_model_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_user_error(invoke("run", "--model", "nobody/nothing", "-o", tmp_path / "r.json"), "not found")


def test_too_long_for_the_context_is_refused_before_generating(tiny_gpt2_dir, tmp_path):
    result = invoke("run", "--model", tiny_gpt2_dir, "--max-new-tokens", 100, "-o", tmp_path / "r.json")
    assert_user_error(result, "exceeds its context of 64 tokens", "--max-new-tokens 59")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--runs", "0"], "'runs' must be at least 1"),
        (["--max-new-tokens", "-3"], "'max_new_tokens' must be at least 1"),
        (["--modes", "cached,turbo"], "'modes' cannot be 'turbo'"),
        (["--dtype", "int8"], "'dtype' cannot be 'int8'"),
        (["--device", "cuda:3"], "device cuda:3 is not available"),
        (["--config", "/no/such.toml"], "config file /no/such.toml does not exist"),
    ],
)
def test_bad_options_are_one_line_errors(args, fragment, tmp_path):
    import torch

    if "cuda:3" in args and torch.cuda.device_count() > 3:
        pytest.skip("this machine has that GPU")
    assert_user_error(invoke("run", "--model", "tiny-gpt2", "-o", tmp_path / "r.json", *args), fragment)


def test_unwritable_output_is_refused_before_measuring(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_user_error(invoke("run", "--model", "tiny-gpt2", "-o", blocker / "r.json"), "cannot write results")


def test_show_renders_a_results_file(tmp_path):
    path = tmp_path / "r.json"
    write_result(make_result({"cached": [1.0, 1.2], "uncached": [5.0, 5.4]}), path)
    result = invoke("show", path)
    assert result.exit_code == 0, result.output
    assert "with KV caching: 1.1 +- 0.141 seconds" in result.stdout
    assert "cached is 4.73× faster" in result.stdout


def test_show_says_what_a_lossy_cache_changed_in_the_output(tmp_path):
    path = tmp_path / "r.json"
    result = make_result(cache_implementation="quantized")
    cell = result.cells[0]
    cell.agreement_token_share, cell.agreement_first_divergence = 0.875, 12
    cell.agreement_top1_share, cell.agreement_kl_mean_nats = 0.96, 0.0123
    write_result(result, path)
    shown = invoke("show", path)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.stdout.split())
    # A quantized cell that names no bits, as before they were an axis, ran with the configured 4.
    agreement = "87.5% of greedy tokens agree with the dynamic cache's, the first difference at new token 12"
    assert f"quantized int4 cache: {agreement}" in text
    assert "the most likely next token agrees at 96.0% of positions, mean KL divergence 0.0123 nats" in text


def test_show_reads_a_file_from_before_output_agreement_was_measured(tmp_path):
    data = json.loads(Path("tests/data/golden.json").read_text())
    for cell in data["cells"]:
        for name in ("agreement_token_share", "agreement_first_divergence", "agreement_top1_share"):
            del cell[name]
        del cell["agreement_kl_mean_nats"], cell["agreement_note"]
    older = tmp_path / "older.json"
    older.write_text(json.dumps(data))
    shown = invoke("show", older)
    assert shown.exit_code == 0, shown.output
    assert "with KV caching" in shown.stdout and "greedy" not in shown.stdout


def test_compare_gates_on_regressions(tmp_path):
    base, same, slow = tmp_path / "base.json", tmp_path / "same.json", tmp_path / "slow.json"
    write_result(make_result({"cached": [1.0, 1.01, 0.99, 1.0]}), base)
    write_result(make_result({"cached": [1.0, 1.02, 0.98, 1.0]}), same)
    write_result(make_result({"cached": [1.5, 1.52, 1.48, 1.5]}), slow)
    assert invoke("compare", base, same, "--fail-on-regression", 5).exit_code == 0
    failed = invoke("compare", base, slow, "--fail-on-regression", 5)
    assert failed.exit_code == 1
    assert "1 regression(s) beyond 5%" in failed.stdout
    assert invoke("compare", base, slow).exit_code == 0


def test_compare_counts_what_other_sweeps_hold_unless_gated_or_verbose(tmp_path):
    """Files of other sweeps share no cell: without the gate, one line per file counts what has no
    counterpart; --verbose and the gate (whose verdict depends on them) name each measurement."""
    paths = [tmp_path / f"{name}.json" for name in ("base", "llama", "opt")]
    for path, model in zip(paths, ("gpt2", "llama", "opt")):
        write_result(make_result(model=model), path)
    # csv holds no warnings: they come on stderr, one line each, as a terminal shows them.
    plain = invoke("compare", *paths, "-f", "csv")
    assert plain.exit_code == 0, plain.output
    lines = plain.stderr.splitlines()
    assert not any(line.startswith("not judged:") or "not in the baseline" in line for line in lines), plain.stderr
    counted = [line for line in lines if "no counterpart" in line]
    assert counted == [
        f"warning: {name}: 2 measurement(s) with no counterpart in the baseline base, and 2 of the baseline's"
        " with none here: shown, not judged; --verbose lists each"
        for name in ("llama", "opt")
    ]
    listed = invoke("compare", *paths, "-f", "csv", "--verbose").stderr.splitlines()
    gated = invoke("compare", *paths, "-f", "csv", "--fail-on-regression", 5)
    assert gated.exit_code == 3
    for each in (listed, gated.stderr.splitlines()):
        assert not any("no counterpart" in line for line in each)
        missing = [line for line in each if line.startswith("not judged:") and ": missing (it has no such" in line]
        assert len(missing) == 4 and any("gpt2" in line and "cached in opt" in line for line in missing)
        assert sum("not in the baseline base" in line for line in each) == 4


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json", "benchmark-action"])
def test_compare_formats(tmp_path, fmt):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_result(make_result(), a)
    write_result(make_result(), b)
    result = invoke("compare", a, b, "--format", fmt)
    assert result.exit_code == 0, result.output
    if fmt in ("json", "benchmark-action"):
        json.loads(result.stdout)
    assert "gpt2" in result.stdout and "uncached" in result.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["{a}"], "at least two results files"),
        (["{a}", "{missing}"], "does not exist"),
        (["{a}", "{a}", "--format", "xml"], "--format cannot be 'xml'"),
    ],
)
def test_compare_bad_input(tmp_path, args, fragment):
    a = tmp_path / "a.json"
    write_result(make_result(), a)
    filled = [arg.format(a=a, missing=tmp_path / "missing.json") for arg in args]
    assert_user_error(invoke("compare", *filled), fragment)


@pytest.mark.parametrize(
    "command",
    [["--help"], ["compare", "--help"], ["run", "--help"], ["show", "--help"], ["gate", "--help"], ["capacity", "--help"]],
)
def test_help_and_compare_do_not_import_torch(command):
    code = (
        "import sys\n"
        "from kvbench.cli import app\n"
        f"try:\n    app({command!r})\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules or 'transformers' in sys.modules else 'LIGHT')\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.stdout.strip().endswith("LIGHT"), completed.stdout[-500:] + completed.stderr[-500:]


def heavy_modules_imported_by(arguments: list[str]) -> list[str]:
    """The heavy packages a command imports, run in a fresh interpreter as a user would."""
    code = (
        "import sys\nfrom kvbench.cli import app\n"
        f"try:\n    app({arguments!r})\nexcept SystemExit:\n    pass\n"
        "print('IMPORTED', *sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'scipy', 'pandas'}))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    last = completed.stdout.strip().splitlines()[-1]
    assert last.startswith("IMPORTED"), completed.stdout[-500:] + completed.stderr[-500:]
    return last.split()[1:]


def test_compare_itself_imports_no_torch_and_no_scipy(tmp_path):
    """compare and show judge and fit with kvbench's own t distribution and fits: scipy's import alone would
    cost them half a second (benchmarks/startup.py)."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_result(make_result(), a)
    write_result(make_result({"cached": [1.1, 1.2, 1.0, 1.15]}), b)
    assert heavy_modules_imported_by(["compare", str(a), str(b), "--fail-on-regression", "5"]) == []


def test_show_of_a_sweep_with_length_fits_imports_no_torch_and_no_scipy():
    assert heavy_modules_imported_by(["show", str(Path(__file__).parent.parent / "results" / "explain-cpu-long.json")]) == []


def test_show_flags_outliers(tmp_path):
    path = tmp_path / "r.json"
    write_result(make_result({"cached": [1.0, 1.1, 0.9, 1.05, 1.02, 5.0], "uncached": [4.0, 4.1, 3.9]}), path)
    result = invoke("show", path)
    assert "outlier in cached: run 6 (5.000 s) against a median of 1.035 s" in result.stdout
    assert "outlier in uncached" not in result.stdout


def test_sigterm_stops_a_run_like_ctrl_c_and_keeps_the_finished_runs(tmp_path):
    """A cancelled CI job sends SIGTERM: the finished runs must be saved and the exit code say so."""
    import signal
    import time

    output = tmp_path / "cancelled.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvbench",
            "run",
            "-m",
            "tiny-gpt2",
            "--max-new-tokens",
            "200",
            "--runs",
            "100000",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "-o",
            str(output),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600  # a safety net for a very busy machine, not a speed check
    while time.monotonic() < deadline:
        if output.exists() and json.loads(output.read_text())["runs"]:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    assert "Interrupted." in stderr and "Traceback" not in stderr
    data = json.loads(output.read_text())
    assert data["complete"] is False and data["runs"]
    assert "INCOMPLETE" in stdout


def test_run_help_shows_every_setting_with_its_declared_default():
    """The help is built from BenchConfig's declarations: every setting is there with its real default."""
    from kvbench.model.settings import BenchConfig

    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    defaults = BenchConfig()
    for default in (
        f"[default: {defaults.model[0]}]",
        f"[default: {defaults.max_new_tokens[0]}]",
        f"[default: {defaults.runs}]",
        f"[default: {','.join(defaults.modes)}]",
        f"[default: {defaults.warmup}]",
    ):
        assert default in result.output
    for name in BenchConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in result.output


def test_module_entry_point_runs_only_as_main():
    """The memory sampler's spawned process re-imports the main module as __mp_main__; the CLI must not
    start there."""
    import runpy

    namespace = runpy.run_module("kvbench.__main__", run_name="__mp_main__")
    assert callable(namespace["main"])
    with pytest.raises(SystemExit):
        runpy.run_module("kvbench.__main__", run_name="__main__")


SHIPPED_CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.toml"))


@pytest.mark.parametrize("config", SHIPPED_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_passes_every_check(config, tmp_path):
    """What a real run checks before its first generation (models, lengths, settings), without measuring;
    the GPU configs on the CPU (this machine has none)."""
    on_cpu = ("--device", "cpu") if "gpu" in config.name else ()
    result = invoke("run", "--config", config, *on_cpu, "-o", tmp_path / "r.json", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "generations at most" in result.stdout and not (tmp_path / "r.json").exists()


def test_version_and_short_help():
    from kvbench import __version__

    assert invoke("--version").stdout.strip() == f"kvbench {__version__}"
    short = invoke("run", "-h")
    assert short.exit_code == 0 and "--max-new-tokens" in short.stdout
    assert "--resume  <bool>" not in short.stdout.replace("│", " ")


def test_dry_run_checks_and_lists_the_cells_without_measuring(tmp_path):
    output = tmp_path / "planned.json"
    result = invoke("run", "-m", "tiny-gpt2", "-n", 8, "-n", 16, "-r", 2, "-w", 1, "-d", "cpu", "-o", output, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "tiny-gpt2 · 8 tok" in result.stdout and "tiny-gpt2 · 16 tok" in result.stdout
    assert "12 generations at most" in result.stdout  # 2 cells x (2 runs + 1 warmup) x 2 modes
    assert not output.exists()
    failing = invoke("run", "-m", "tiny-gpt2", "-n", 600, "-d", "cpu", "-o", output, "--dry-run")
    assert_user_error(failing, "exceeds its context")


def test_output_dash_prints_the_document_and_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "-m", "tiny-gpt2", "-n", 8, "-r", 2, "-w", 0, "-d", "cpu", *HERE, "-o", "-")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["format"] == "kvbench-results" and len(document["runs"]) == 4
    assert list(tmp_path.iterdir()) == []
    assert "summary: tiny-gpt2 · 8 tok" in result.stderr


def test_progress_lines_go_to_a_log_that_is_not_a_terminal(tmp_path):
    """CliRunner's stderr is not a terminal, as in a CI log: one plain line per generation."""
    result = invoke("run", "-m", "tiny-gpt2", "-n", 8, "-r", 2, "-w", 1, "-d", "cpu", *HERE, "-o", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in lines] == [f"[{i}/6" for i in range(1, 7)]
    assert "warmup cached 1/1: unmeasured" in lines[0]
    assert re.search(r"\[3/6\] cached 1/2: \d+\.\d{3} s · elapsed \d+:\d\d · about \d+:\d\d left", lines[2])


def test_show_output_prints_each_modes_text(tiny_gpt2_dir, tmp_path):
    output = tmp_path / "r.json"
    result = invoke("run", "-m", tiny_gpt2_dir, "-n", 6, "-r", 1, "-w", 0, *HERE, "-o", output, "--show-output")
    assert result.exit_code == 0, result.output
    texts = json.loads(output.read_text())["cells"][0]["generated_text"]
    assert set(texts) == {"cached", "uncached"} and texts["cached"] == texts["uncached"]
    assert f"· cached generated:\n{texts['cached']}" in result.stdout
    shown = invoke("show", output, "--show-output")
    assert f"· uncached generated:\n{texts['uncached']}" in shown.stdout


def test_a_model_without_tokenizer_says_the_prompt_is_not_used(tmp_path):
    result = invoke("run", "-m", "tiny-llama", "-n", 4, "-r", 1, "-w", 0, "-d", "cpu", *HERE, "-o", tmp_path / "r.json")
    assert "tiny-llama has no tokenizer, so the prompt text is not used" in result.stdout


def test_dtype_aliases_are_accepted(tmp_path):
    result = invoke("run", "-m", "tiny-gpt2", "-n", 4, "-r", 1, "-w", 0, "--dtype", "fp32", *HERE, "-o", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["config"]["dtype"] == ["float32"]


def test_a_slower_cache_is_called_slower_not_a_fraction_faster(tmp_path):
    path = tmp_path / "r.json"
    write_result(make_result({"cached": [2.0, 2.2], "uncached": [1.0, 1.0]}), path)
    shown = invoke("show", path).stdout
    assert "cached is 2.10× slower than uncached" in shown
    assert "× faster" not in shown


@pytest.mark.parametrize(
    "command", [[], ["run"], ["compare"], ["show"], ["plot"], ["gate"], ["capacity"]], ids=lambda c: " ".join(c) or "kvbench"
)
def test_help_shows_no_python_type_names_and_keeps_brackets(command):
    """Typer's type labels (`<bool>`, `<str>`, `<list[Path]>`) are Python's, not the user's; and Rich markup
    must not eat literal brackets such as `kvbench[ray]`."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    for label in ("<bool>", "<str>", "<path>", "<list[", "<int>", "<float>"):
        assert label not in result.output
    if command == ["run"]:
        assert "pip install 'kvbench[ray]'" in result.output
        assert "[default: results/<model>-<time>-<4 hex digits>.json]" in result.output


def test_show_format_markdown_prints_each_cells_table_to_paste(tmp_path):
    path = tmp_path / "r.json"
    write_result(make_result({"cached": [1.0, 1.1, 0.9], "uncached": [4.0, 4.2, 3.8]}, model="a|b<i>"), path)
    result = invoke("show", path, "--format", "markdown")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("| mode |")))
    assert lines[header + 1].startswith("| --- | ---: |")
    assert lines[header + 2].startswith("| cached | 3 | 1.000 ± 0.100 |")
    assert lines[header + 3].startswith("| uncached | 3 | 4.000 ± 0.200 |")
    assert "a\\|b&lt;i>" in result.stdout and "<i>" not in result.stdout  # a name cannot break the table
    assert "cached is 4.00× faster than uncached" in result.stdout
    assert_user_error(invoke("show", path, "--format", "html"), "--format cannot be 'html'", "table, markdown")


def test_the_summary_line_gives_the_verdict_first_in_about_120_characters(tmp_path):
    path = tmp_path / "r.json"
    write_result(make_result({"cached": [1.0, 1.1, 0.9], "uncached": [4.0, 4.2, 3.8]}, max_new_tokens=200), path)
    (line,) = [line for line in invoke("show", path).stdout.splitlines() if line.startswith("summary: ")]
    assert re.fullmatch(
        r"summary: gpt2 · 200 tok · batch 1 · \w+: cached 4\.00× faster \[\d\.\d\d×, \d\.\d\d×\]: "
        r"1\.000 vs 4\.000 s, n=3 · Test GPU",
        line,
    ), line
    assert len(line) <= 120
