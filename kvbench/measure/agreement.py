"""A cache implementation's output against the dynamic cache's: the dynamic cache's greedy tokens and logits
(the reference, shared by a group's cells in one process), and this cache fed those tokens for its logits at
the same positions. Each is taken from an untimed warmup where there is one to take it from, else from an
untimed pass after the timed runs.

Every step's logits over the vocabulary grow with the generation: a 128k vocabulary at 32k steps is 16.8 GB a
sequence. Where they would take more than MOST_KEPT_LOGITS_BYTES, nothing is kept: the two passes run side by
side, a step at a time, and each position's figures are computed on the host as it comes (streamed_agreement)."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

from kvbench.measure.generation import Generation
from kvbench.model.caches import REFERENCE
from kvbench.model.records import CellResult

# A reference's logits kept for its group's cells up to this size (float32, batch x steps x vocabulary): GPT-2
# at 1,000 steps is 201 MB a sequence. Beyond it, each cell compares step by step, at the cost of generating
# the reference again for every cell of its group.
MOST_KEPT_LOGITS_BYTES = 512 * 2**20
# How long one pass waits for the other's next step before deciding it has failed.
STEP_WAIT_S = 600.0


def logits_bytes(batch_size: int, steps: int, vocab_size: int) -> int:
    """What keeping every step's float32 logits takes."""
    return batch_size * steps * vocab_size * 4


def first_divergence(a: Any, b: Any) -> int | None:
    """Index of the first generated position where two (batch, tokens) id tensors differ, or None."""
    differs = (a != b).any(dim=0).nonzero()
    return int(differs[0]) if differs.numel() else None


@dataclass
class OutputAgreement:
    """How a cache's greedy output compares with the dynamic cache's (CellResult's agreement_ fields)."""

    token_share: float
    first_divergence: int | None
    top1_share: float
    kl_mean_nats: float


def output_agreement(reference_ids: Any, ids: Any, reference_logits: Any, logits: Any) -> OutputAgreement:
    """`ids` against the dynamic cache's `reference_ids` (batch, new tokens), and `logits` against
    `reference_logits` (batch, new tokens, vocabulary), both taken at the same positions of the same sequence:
    top-1 agreement and KL(reference || logits), in float64 so that a lossless cache reads 0 and not rounding."""
    import torch

    kl = torch.zeros(reference_logits.shape[:2], dtype=torch.float64)
    # One position at a time: float64 copies of every position's distribution at once could be gigabytes.
    for position in range(reference_logits.shape[1]):
        reference_log_p = torch.log_softmax(reference_logits[:, position].to(torch.float64), dim=-1)
        log_p = torch.log_softmax(logits[:, position].to(torch.float64), dim=-1)
        kl[:, position] = (reference_log_p.exp() * (reference_log_p - log_p)).sum(dim=-1)
    top1 = reference_logits.argmax(dim=-1) == logits.argmax(dim=-1)
    return OutputAgreement(
        token_share=float((ids.cpu() == reference_ids.cpu()).to(torch.float64).mean()),
        first_divergence=first_divergence(ids.cpu(), reference_ids.cpu()),
        top1_share=float(top1.to(torch.float64).mean()),
        # Never below 0 but for the last bits of float64 arithmetic.
        kl_mean_nats=max(0.0, float(kl.mean())),
    )


@dataclass
class Reference:
    """The dynamic cache's greedy new tokens (batch, new tokens) and logits (batch, new tokens, vocabulary)."""

    ids: Any
    logits: Any


@dataclass
class Comparison:
    """What a cell needs to compare its cache with the dynamic cache, gathered as the cell is measured."""

    reference: Reference | None = None
    fed_logits: Any = None  # this cache's logits with the reference's tokens fed
    problem: Exception | None = None  # why a warmup could not gather its part
    # Too large to keep (see MOST_KEPT_LOGITS_BYTES): compared step by step after the timed runs.
    streamed: bool = False

    def record(self, cell_result: CellResult, generate: Generation, measured_ids: Any) -> Reference:
        """The agreement into `cell_result`, with an untimed pass for any part not gathered yet;
        `measured_ids` are this cache's own greedy tokens from the first timed run. Returns the reference."""
        if self.problem is not None:
            raise self.problem
        if self.streamed:
            reference_ids, agreement = streamed_agreement(generate, measured_ids)
            _store(cell_result, agreement)
            return Reference(reference_ids, None)
        if self.reference is None:
            self.reference = Reference(*generate.untimed_pass(REFERENCE))
        if self.fed_logits is None:
            _, self.fed_logits = generate.untimed_pass(generate.cell.cache_implementation, fed_ids=self.reference.ids)
        _store(cell_result, output_agreement(self.reference.ids, measured_ids, self.reference.logits, self.fed_logits))
        return self.reference


def _store(cell_result: CellResult, agreement: OutputAgreement) -> None:
    cell_result.agreement_token_share = agreement.token_share
    cell_result.agreement_first_divergence = agreement.first_divergence
    cell_result.agreement_top1_share = agreement.top1_share
    cell_result.agreement_kl_mean_nats = agreement.kl_mean_nats


class _Handoff:
    """One step's reference at a time, from the reference's pass to the compared pass, each in its own
    thread; either side's failure ends the other's wait rather than leaving it waiting for ever."""

    def __init__(self) -> None:
        self._steps: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.failed = threading.Event()

    def put(self, step: Any) -> None:
        while not self.failed.is_set():
            try:
                self._steps.put(step, timeout=0.1)
                return
            except queue.Full:
                continue
        raise RuntimeError("the compared pass stopped")

    def get(self) -> Any:
        waited = 0.0
        while not self.failed.is_set() and waited < STEP_WAIT_S:
            try:
                return self._steps.get(timeout=0.1)
            except queue.Empty:
                waited += 0.1
        raise RuntimeError("the dynamic cache's pass stopped before giving its next step")


def streamed_agreement(generate: Generation, measured_ids: Any) -> tuple[Any, OutputAgreement]:
    """The dynamic cache's greedy pass and this cell's cache fed the same tokens, run side by side one step at
    a time, each step's two distributions compared on the host as they come: what is kept grows with the
    steps (a number or two a position), not with steps x vocabulary. Returns the reference's new token ids
    and the agreement with `measured_ids`, this cache's own greedy tokens."""
    import torch
    from transformers import LogitsProcessor

    handoff = _Handoff()
    # The end-of-sequence ids generate() keeps from being chosen until the full length (min_new_tokens): the
    # passes run without that rule, so that each step's logits are the raw ones, and apply it themselves.
    held_back = _end_of_sequence_ids(generate.model)
    kl: list[Any] = []
    top1: list[Any] = []
    chosen_ids: list[Any] = []

    def only(tokens: Any, scores: Any) -> Any:
        return torch.full_like(scores, -torch.inf).scatter_(1, tokens.to(scores.device).unsqueeze(1), 0.0)

    class Reference(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            log_p = torch.log_softmax(scores.to("cpu", torch.float64), dim=-1)
            eligible = log_p.clone()
            eligible[:, held_back] = -torch.inf
            tokens = eligible.argmax(dim=-1)
            handoff.put((log_p, tokens))
            return only(tokens, scores)

    class Compared(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            log_p = torch.log_softmax(scores.to("cpu", torch.float64), dim=-1)
            reference_log_p, tokens = handoff.get()
            kl.append((reference_log_p.exp() * (reference_log_p - log_p)).sum(dim=-1))
            top1.append(reference_log_p.argmax(dim=-1) == log_p.argmax(dim=-1))
            chosen_ids.append(tokens)
            return only(tokens, scores)

    failure: list[BaseException] = []

    def reference_pass() -> None:
        try:
            generate.plain_pass(REFERENCE, Reference())
        except BaseException as error:  # noqa: BLE001 - handed to the comparing thread, which raises it
            failure.append(error)
            handoff.failed.set()

    thread = threading.Thread(target=reference_pass, name="kvbench-reference-pass", daemon=True)
    thread.start()
    try:
        generate.plain_pass(generate.cell.cache_implementation, Compared())
    except BaseException:
        handoff.failed.set()
        raise
    finally:
        thread.join()
    if failure:
        raise failure[0]
    reference_ids = torch.stack(chosen_ids, dim=1)
    kl_by_position = torch.stack(kl, dim=1)
    agreement = OutputAgreement(
        token_share=float((measured_ids.cpu() == reference_ids).to(torch.float64).mean()),
        first_divergence=first_divergence(measured_ids.cpu(), reference_ids),
        top1_share=float(torch.stack(top1, dim=1).to(torch.float64).mean()),
        kl_mean_nats=max(0.0, float(kl_by_position.mean())),
    )
    return reference_ids, agreement


def _end_of_sequence_ids(model: Any) -> list[int]:
    ids = model.generation_config.eos_token_id
    if ids is None:
        return []
    return [int(i) for i in (ids if isinstance(ids, list) else [ids])]
