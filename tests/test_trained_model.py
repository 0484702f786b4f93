"""tiny-milton, the trained model kvbench ships: its weights are trained, and on it a lossless cache agrees
with the dynamic cache at every position while a lossy one is measured, with where it first diverges."""

from __future__ import annotations

import json
import math

import pytest

from kvbench.measure.loading import build_model
from kvbench.measure.models import SHIPPED_CONFIG_DIR, locate, prepare_model, shipped_names
from kvbench.runner.benchmark import run_benchmark
from tests.conftest import tiny_config

MILTON = "tiny-milton"
# Book IX, line 1: a held-out line would be better still, but any line shows trained weights against random
# ones, whose loss sits at the vocabulary's uniform log(V).
LINE = "No more of talk where God or Angel Guest\nWith Man, as with his Friend, familiar us'd"


def test_it_is_shipped_with_weights_a_tokenizer_and_its_training_record():
    folder = SHIPPED_CONFIG_DIR / MILTON
    assert MILTON in shipped_names()
    assert locate(MILTON).kind == "local"
    assert (folder / "model.safetensors").stat().st_size < 5 * 2**20
    record = json.loads((folder / "training.json").read_text())
    assert "Paradise Lost" in record["text"] and len(record["text_sha256"]) == 64
    vocabulary = json.loads((folder / "config.json").read_text())["vocab_size"]
    assert record["held_out_loss"] < 0.6 * math.log(vocabulary)


def test_its_weights_are_trained_not_random():
    import torch

    prepared = prepare_model(MILTON, "auto")
    loaded = build_model(prepared, dtype="auto", attn_implementation="auto", device="cpu", seed=0)
    assert loaded.info()["weights"] == "pretrained"
    ids = prepared.tokenizer(LINE, return_tensors="pt").input_ids
    assert prepared.tokenizer.decode(ids[0]) == LINE  # one token per character, joined back without spaces
    with torch.no_grad():
        loss = float(loaded.model(ids, labels=ids).loss)
    uniform = math.log(loaded.model.config.vocab_size)
    assert loss < 0.6 * uniform, f"{loss:.2f} nats per character against a uniform {uniform:.2f}"


def _cache_run(implementation: str, **settings):
    config = tiny_config(
        MILTON,
        max_new_tokens=[48],
        runs=1,
        modes=["cached"],
        cache_implementation=[implementation],
        prompt="Of Mans First Disobedience, and the Fruit",
        **settings,
    )
    return run_benchmark(config).cells[0]


def test_a_lossless_cache_agrees_with_the_dynamic_cache_at_every_position():
    cell = _cache_run("static")
    assert cell.status == "measured", cell.reason
    assert cell.agreement_token_share == 1.0
    assert cell.agreement_first_divergence is None
    assert cell.agreement_top1_share == 1.0
    assert cell.agreement_kl_mean_nats < 1e-6


def test_a_lossy_cache_is_measured_with_its_first_divergence():
    pytest.importorskip("optimum.quanto", reason="the quanto backend needs pip install 'kvbench[quantized]'")
    cell = _cache_run("quantized", quantized_nbits=2, quantized_group_size=64, quantized_residual_length=8, warmup=1)
    assert cell.status == "measured", cell.reason
    # Two bits a value move a trained model's next-token choice somewhere in 48 positions.
    assert cell.agreement_top1_share < 1.0
    assert cell.agreement_kl_mean_nats > 1e-3
    if cell.agreement_token_share < 1.0:
        assert 0 <= cell.agreement_first_divergence < 48
    else:
        assert cell.agreement_first_divergence is None
