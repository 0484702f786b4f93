"""Hostile models and launch paths: weight files transformers loads (and only those) are checked, before
any measuring process starts; models kvbench cannot measure are one line; a run stopped by a signal says
so, and what it measured stays."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvbench.storage.document import read_result
from tests.test_hostile import (
    QUICK,
    Untouched,
    assert_one_line,
    copy_model,
    ctrl_c_as_a_shell_leaves_it,
    invoke,
    wait_for_first_run,
)

ROOT = Path(__file__).resolve().parent.parent


class _RunsCode:
    """A pickle that runs a command when loaded without weights_only: it touches `marker`."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickled_weights(tiny_gpt2_dir: Path, tmp_path: Path, *, zip_format: bool) -> Path:
    """The tiny GPT-2 with its weights as pytorch_model.bin: torch's zip format, or its legacy (pre-1.6) one."""
    import torch
    from safetensors.torch import load_file

    model = copy_model(tiny_gpt2_dir, tmp_path)
    weights = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save(weights, model / "pytorch_model.bin", _use_new_zipfile_serialization=zip_format)
    return model


# --- Weight files -------------------------------------------------------------------------------------


def test_a_legacy_format_pytorch_model_bin_is_measured(tiny_gpt2_dir, tmp_path):
    model = _pickled_weights(tiny_gpt2_dir, tmp_path, zip_format=False)
    output = tmp_path / "r.json"
    result = invoke("run", "-m", model, *QUICK, "-o", output)
    assert result.exit_code == 0, result.output
    stored = read_result(output)
    assert stored.cells[0].status == "measured" and stored.cells[0].model["weights"] == "pretrained"


def test_a_legacy_format_pickle_that_would_run_code_is_still_refused(tiny_gpt2_dir, tmp_path):
    import torch

    model = copy_model(tiny_gpt2_dir, tmp_path)
    (model / "model.safetensors").unlink()
    _RunsCode.marker = str(tmp_path / "pwned")
    torch.save({"transformer.wte.weight": _RunsCode()}, model / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    result = invoke("run", "-m", model, *QUICK, "-o", tmp_path / "r.json")
    assert_one_line(result, 2, "pytorch_model.bin cannot be loaded safely")
    assert not (tmp_path / "pwned").exists()


def _trainer_checkpoint(model: Path, tmp_path: Path) -> None:
    """What a Trainer saves beside the weights: its arguments, pickled whole (transformers never loads them)."""
    import torch

    _RunsCode.marker = str(tmp_path / "pwned")
    torch.save(_RunsCode(), model / "training_args.bin")
    torch.save({"step": 10}, model / "optimizer.pt")


def test_a_trainer_checkpoints_other_files_are_not_weights(tiny_gpt2_dir, tmp_path):
    # pytorch_model.bin is what transformers loads; training_args.bin beside it, never.
    model = _pickled_weights(tiny_gpt2_dir, tmp_path, zip_format=True)
    _trainer_checkpoint(model, tmp_path)
    output = tmp_path / "r.json"
    result = invoke("run", "-m", model, *QUICK, "--weights", "pretrained", "-o", output)
    assert result.exit_code == 0, result.output
    assert read_result(output).cells[0].status == "measured"
    assert not (tmp_path / "pwned").exists()


def test_a_directory_with_only_a_trainers_files_has_no_weights(tiny_gpt2_dir, tmp_path):
    model = copy_model(tiny_gpt2_dir, tmp_path)
    (model / "model.safetensors").unlink()
    _trainer_checkpoint(model, tmp_path)
    assert_one_line(
        invoke("run", "-m", model, *QUICK, "--weights", "pretrained", "-o", tmp_path / "r.json"),
        2,
        "holds no weight files that transformers loads",
        "--weights random",
    )
    output = tmp_path / "auto.json"
    result = invoke("run", "-m", model, *QUICK, "-o", output)
    assert result.exit_code == 0, result.output
    assert read_result(output).cells[0].model["weights"] == "random"


# --- Models kvbench does not measure ----------------------------------------------------------------


def _tiny_encoder_decoder(kind: str, directory: Path) -> Path:
    import torch
    import transformers

    small = dict(
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        vocab_size=64,
        max_position_embeddings=64,
    )
    configs = {
        "whisper": (
            transformers.WhisperConfig,
            transformers.WhisperForConditionalGeneration,
            dict(
                num_mel_bins=8,
                max_source_positions=16,
                max_target_positions=64,
                decoder_start_token_id=1,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                suppress_tokens=[],
                begin_suppress_tokens=[],
            ),
        ),
        "pegasus": (transformers.PegasusConfig, transformers.PegasusForConditionalGeneration, {}),
        "marian": (transformers.MarianConfig, transformers.MarianMTModel, dict(decoder_vocab_size=64, pad_token_id=0)),
    }
    config_class, model_class, extra = configs[kind]
    config = config_class(**{**small, **extra})
    if kind == "whisper":
        del config.max_position_embeddings
    torch.manual_seed(0)
    model_class(config).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("kind", ["whisper", "pegasus", "marian"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_encoder_decoders_are_refused_in_one_line(kind, dry_run, tmp_path):
    model = _tiny_encoder_decoder(kind, tmp_path / kind)
    untouched = Untouched(tmp_path)
    args = ["run", "-m", model, *QUICK, "-o", tmp_path / "r.json"] + (["--dry-run"] if dry_run else [])
    assert_one_line(invoke(*args), 2, f"model_type '{kind}'", "encoder-decoder", "decoder-only causal LMs")
    untouched.check()


# --- Checked before any measuring process starts ---------------------------------------------------


def _cached_hub_model(source: Path, cache: Path, hub_id: str) -> Path:
    """`hub_id` in a Hugging Face cache laid out as huggingface_hub lays it out: its snapshot of `main`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repository = cache / f"models--{hub_id.replace('/', '--')}"
    snapshot = repository / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(commit)
    return snapshot


def test_a_cached_hub_models_unsafe_weights_are_one_line_before_launching(tiny_gpt2_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants
    import torch

    from kvbench.launch.workers import WorkerProcess

    snapshot = _cached_hub_model(tiny_gpt2_dir, tmp_path / "hub", "kvtest/unsafe")
    (snapshot / "model.safetensors").unlink()
    _RunsCode.marker = str(tmp_path / "pwned")
    torch.save({"transformer.wte.weight": _RunsCode()}, snapshot / "pytorch_model.bin")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    given = []
    # A measuring process may start early, importing torch while the run checks its model: it must never be
    # given the job that would load these weights.
    monkeypatch.setattr(WorkerProcess, "measure", lambda self, job, *args: given.append(job) or pytest.fail("given a job"))
    work = tmp_path / "work"
    work.mkdir()
    quick_in_processes = [word for word in QUICK if word not in ("--isolation", "none")]
    result = invoke("run", "-m", "kvtest/unsafe", *quick_in_processes, "-o", work / "r.json")
    assert_one_line(result, 2, "kvtest/unsafe", "pytorch_model.bin cannot be loaded safely")
    assert given == [] and not (tmp_path / "pwned").exists()


# --- Failures of a one-cell run in a measuring process --------------------------------------------


def test_a_single_model_failing_to_load_in_a_measuring_process_is_one_line(tiny_gpt2_dir, tmp_path):
    """As with --isolation none: a model that cannot load is the one-cell run's error, not a failed cell."""
    model = copy_model(tiny_gpt2_dir, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["n_embd"] = 16  # weights that do not fit: readable files, a failure only loading shows
    (model / "config.json").write_text(json.dumps(config))
    quick_in_processes = [word for word in QUICK if word not in ("--isolation", "none")]
    result = invoke("run", "-m", model, *quick_in_processes, "--isolation", "process", "-o", tmp_path / "r.json")
    assert_one_line(result, 2, "cannot load the model")


# --- Signals --------------------------------------------------------------------------------------


def test_an_unreachable_ray_address_is_one_line_at_once(tmp_path):
    pytest.importorskip("ray")
    untouched = Untouched(tmp_path)
    # Port 1 of this machine: nothing listens there, so the connection is refused.
    result = invoke(
        "run", "-m", "tiny-gpt2", *QUICK, "--launcher", "ray", "--ray-address", "127.0.0.1:1", "-o", tmp_path / "r.json"
    )
    assert_one_line(result, 2, "127.0.0.1:1", "ray start --head")
    untouched.check()


def test_sigterm_to_a_ray_run_is_an_interruption(tmp_path):
    """ray.init sets its own SIGTERM handler (exit 15, nothing said): a cancelled CI job's run must still
    stop as Ctrl-C does, with its message, exit code 130 and the runs it measured."""
    pytest.importorskip("ray")
    output = tmp_path / "r.json"
    # The measuring process waits after its first measured run, so the signal comes while the run measures.
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "KVBENCH_TEST_FAULT": "hang", "RAY_worker_niceness": "0"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvbench",
            "run",
            "-m",
            "tiny-gpt2",
            *QUICK[:-2],
            "-r",
            "2",
            "--launcher",
            "ray",
            "--no-device-peaks",
            "-o",
            str(output),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=tmp_path,
    )
    wait_for_first_run(process, output)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    assert "Interrupted." in stderr and "Traceback" not in stderr
    assert read_result(output).complete is False


def _held_run(tmp_path: Path, held: Path, *args: str) -> subprocess.Popen:
    """A `kvbench run` in its own process group whose third generation touches `held` and waits there,
    so a test signals it while it measures (after two saved runs), not after a guess at how long that takes."""
    code = (
        "import faulthandler, pathlib, signal, sys, time\n"
        # A run that does not stop can say where each of its threads is (the test asks with SIGUSR1).
        "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
        "import kvbench.measure.generation\n"
        "calls = []\n"
        "generate = kvbench.measure.generation.Generation.__call__\n"
        "def held(self, mode):\n"
        "    calls.append(mode)\n"
        "    if len(calls) == 3:\n"
        f"        pathlib.Path({str(held)!r}).touch()\n"
        "        time.sleep(600)\n"
        "    return generate(self, mode)\n"
        "kvbench.measure.generation.Generation.__call__ = held\n"
        "from kvbench.cli import main\n"
        f"sys.argv = ['kvbench', 'run', *{list(args)!r}]\n"
        "main()\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    # A session of its own: Ctrl-C at a terminal signals the whole foreground process group.
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=tmp_path,
        start_new_session=True,
        preexec_fn=ctrl_c_as_a_shell_leaves_it,
    )


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300  # a safety net for a stuck start, never a speed check
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.exists(), process.stderr.read() if process.poll() is not None else "the run never got there"


def _communicate_or_show_where_it_hangs(process: subprocess.Popen) -> tuple[str, str]:
    try:
        return process.communicate(timeout=120)  # a safety net for a run that never stops, not a speed check
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        time.sleep(2)
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"the run did not stop; its threads:\n{stderr[-6000:]}") from None


def test_ctrl_c_to_the_process_group_is_the_runs_one_message(tmp_path):
    held, output = tmp_path / "held", tmp_path / "r.json"
    process = _held_run(tmp_path, held, "-m", "tiny-gpt2", *QUICK, "-r", "2", "-o", str(output))
    _wait_for(held, process)
    os.killpg(process.pid, signal.SIGINT)  # the run and the memory sampler it started, as a terminal does
    stdout, stderr = _communicate_or_show_where_it_hangs(process)
    assert process.returncode == 130, stderr[-2000:]
    assert "Interrupted." in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    partial = read_result(output)
    assert partial.complete is False and len(partial.runs) == 2


def test_a_weight_index_naming_files_outside_the_model_is_refused(tiny_gpt2_dir, tmp_path):
    """A hostile index must not make kvbench open (or vouch for) files elsewhere on the machine."""
    import json
    import shutil

    from kvbench.core.errors import KvbenchError
    from kvbench.measure.models import weight_files

    model = tmp_path / "model"
    shutil.copytree(tiny_gpt2_dir, model)
    (model / "model.safetensors").unlink()
    index = {"weight_map": {"h.0.attn": "../../etc/passwd"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(KvbenchError, match="outside the model"):
        weight_files(model)
