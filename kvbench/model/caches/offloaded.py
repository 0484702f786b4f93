"""Caches that keep most layers in CPU memory between uses and bring each to the GPU as it is needed."""

from __future__ import annotations

from kvbench.core.devices import is_gpu
from kvbench.model.caches.base import CacheImplementation, CacheSettings


class Offloaded(CacheImplementation):
    what_fits_note = (
        "offloaded caches keep most layers in CPU memory between uses: counting them all on the GPU, as"
        " here, understates what fits"
    )

    def unsupported_reason(self, device: str, settings: CacheSettings) -> str | None:
        if not is_gpu(device):
            return f"cache_implementation={self.name} offloads to a GPU and needs a CUDA device"
        return None


OFFLOADED = Offloaded("offloaded")
OFFLOADED_STATIC = Offloaded("offloaded_static")
