"""What a cache implementation's declaration holds: what generate() is given for it, what it needs, its bytes in
theory and what the figures about it leave out. The defaults are a full-precision cache with no settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kvbench.core.kvsize import cache_bytes_for, cached_positions

FULL_PRECISION_FORMULA = "2 × layers × kv_heads × head_dim × positions × batch × bytes"


class CacheSettings(Protocol):
    """The settings a cache implementation may read (kvbench.model.settings.BenchConfig has them all)."""

    quantized_backend: str
    quantized_nbits: list[int]
    quantized_group_size: int
    quantized_residual_length: int


@dataclass(frozen=True)
class Generated:
    """What a cache's bytes after a generation depend on: the model (its transformers config), the tokens, the
    batch and the states' dtype."""

    model_config: Any
    prompt_tokens: int
    new_tokens: int
    batch: int
    dtype: str


class CacheCell(Protocol):
    """What a cache implementation reads of a cell (kvbench.model.cells.Cell)."""

    @property
    def cache_implementation(self) -> str: ...

    @property
    def quantized_nbits(self) -> int | None: ...


class CacheImplementation:
    """A cache the cached mode can use, by its --cache-implementation name."""

    # The dynamic cache, generate()'s own default: every other implementation is compared with it.
    reference = False
    # How `show` words the theory of its bytes.
    formula = FULL_PRECISION_FORMULA
    # What the what-fits figures leave out for it, or count of its own, said under them; None: nothing of its own.
    what_fits_note: str | None = None
    # Copies of one layer's keys and values at full precision it makes at each step beside itself (a quantized
    # cache dequantizes its states and concatenates the new position to them): what-fits counts them.
    full_precision_layer_copies = 0

    def __init__(self, name: str, *, reference: bool = False) -> None:
        self.name = name
        self.reference = reference

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def bits(self, settings: CacheSettings) -> list[int | None]:
        """The bits its cells take, one cell each; [None] where bits do not apply (they do not multiply its cells)."""
        return [None]

    def settings_problem(self, settings: CacheSettings) -> str | None:
        """What is wrong with the settings it reads, in words the run's checks put after the source; None if
        nothing."""
        return None

    def cache_config(self, settings: CacheSettings, nbits: int | None) -> dict[str, Any] | None:
        """generate()'s cache_config for one of its cells (`nbits` the cell's bits); None: it takes none."""
        return None

    def unsupported_reason(self, device: str, settings: CacheSettings) -> str | None:
        """Why `device`, in this installation, cannot build it, known before trying; None when it can."""
        return None

    def full_precision_window(self, nbits: int | None, new_tokens: int, residual_length: int | None) -> tuple[int, int]:
        """Positions it holds at full precision beside its own layout in a generation of `new_tokens`: when the
        generation ends, and the most at any step (what-fits counts the most). None of them by default."""
        return 0, 0

    def theory_bytes(self, generation: Generated, cache_config: dict[str, Any] | None) -> tuple[int | None, str | None]:
        """Its bytes after `generation`, in theory, and what that theory counts (None: the formula says it)."""
        positions = cached_positions(generation.prompt_tokens, generation.new_tokens)
        return cache_bytes_for(generation.model_config, positions, generation.batch, generation.dtype), None
