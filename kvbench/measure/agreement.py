"""A cache implementation's output against the dynamic cache's: the dynamic cache's greedy tokens and logits
(the reference, shared by a group's cells in one process), and this cache fed those tokens for its logits at
the same positions. Each is taken from an untimed warmup where there is one to take it from, else from an
untimed pass after the timed runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvbench.measure.generation import Generation
from kvbench.model.caches import REFERENCE
from kvbench.model.records import CellResult


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

    def record(self, cell_result: CellResult, generate: Generation, measured_ids: Any) -> Reference:
        """The agreement into `cell_result`, with an untimed pass for any part not gathered yet;
        `measured_ids` are this cache's own greedy tokens from the first timed run. Returns the reference."""
        if self.problem is not None:
            raise self.problem
        if self.reference is None:
            self.reference = Reference(*generate.untimed_pass(REFERENCE))
        if self.fed_logits is None:
            _, self.fed_logits = generate.untimed_pass(generate.cell.cache_implementation, fed_ids=self.reference.ids)
        agreement = output_agreement(self.reference.ids, measured_ids, self.reference.logits, self.fed_logits)
        cell_result.agreement_token_share = agreement.token_share
        cell_result.agreement_first_divergence = agreement.first_divergence
        cell_result.agreement_top1_share = agreement.top1_share
        cell_result.agreement_kl_mean_nats = agreement.kl_mean_nats
        return self.reference
