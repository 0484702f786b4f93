"""Which NVML device is which torch GPU, and what NVML says about a GPU for the environment record.

torch numbers GPUs after CUDA_VISIBLE_DEVICES and in CUDA's fastest-first order; NVML numbers every GPU
of the machine in its own order. The two agree on a GPU's UUID, so a GPU is found by UUID, else by its
PCI bus id, else through a UUID in CUDA_VISIBLE_DEVICES. Where none of these can tell, kvbench says so
and leaves VRAM unmeasured: reading another GPU's memory would be worse than reading none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kvbench.core.devices import cuda_index, is_gpu

UUID_PREFIXES = ("GPU-", "MIG-")
_MIG_ENABLED = 1  # NVML_DEVICE_MIG_ENABLE


class Unidentified(Exception):
    """The NVML device of a torch GPU cannot be told for sure; the message says why."""


def torch_uuid(properties: Any) -> str | None:
    """torch's UUID of a GPU, as text, or None where this torch has none (releases before mid-2024)."""
    uuid = getattr(properties, "uuid", None)
    return str(uuid) if uuid is not None else None


def pci_bus_id(properties: Any) -> str | None:
    """The GPU's PCI address in NVML's spelling (domain:bus:device.function), where torch gives it."""
    parts = [getattr(properties, name, None) for name in ("pci_domain_id", "pci_bus_id", "pci_device_id")]
    if any(not isinstance(part, int) for part in parts):
        return None
    domain, bus, device = parts
    return f"{domain:08X}:{bus:02X}:{device:02X}.0"


def visible_devices(environ: Mapping[str, str]) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES's entries in order (indices, UUIDs or UUID prefixes), or None when unset."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _attempt(call: Any, *args: Any) -> Any:
    """An NVML call's answer, or None when it fails in any way (pynvml raises plain Exceptions too)."""
    try:
        return call(*args)
    except Exception:  # noqa: BLE001 - every failure means the same here: this way does not find it
        return None


def _refuse_mig(nvml: Any, handle: Any, index: int, how: str) -> None:
    """A GPU in MIG mode holds several instances that its PCI address or index cannot tell apart."""
    mode = _attempt(nvml.nvmlDeviceGetMigMode, handle)  # fails on GPUs without MIG: not in MIG mode
    if mode is not None and mode[0] == _MIG_ENABLED:
        raise Unidentified(
            f"cuda:{index} is on a GPU in MIG mode, whose instances {how} cannot tell apart; use a torch that reports GPU UUIDs"
        )


def _uuid_by_prefix(nvml: Any, entry: str) -> str | None:
    """The one GPU whose UUID starts with a CUDA_VISIBLE_DEVICES entry (CUDA accepts unique prefixes)."""
    if _attempt(nvml.nvmlDeviceGetHandleByUUID, entry) is not None:
        return entry
    count = _attempt(nvml.nvmlDeviceGetCount) or 0
    uuids = [_attempt(nvml.nvmlDeviceGetUUID, _attempt(nvml.nvmlDeviceGetHandleByIndex, i)) for i in range(count)]
    matches = [_text(uuid) for uuid in uuids if uuid is not None and _text(uuid).startswith(entry)]
    return matches[0] if len(matches) == 1 else None


def find_uuid(nvml: Any, index: int, properties: Any, environ: Mapping[str, str]) -> str:
    """The UUID, spelled as NVML spells it, of torch's GPU `index`; raises Unidentified with the reason."""
    uuid = torch_uuid(properties)
    if uuid is not None:
        # A MIG instance's UUID is "MIG-..." in NVML, a whole GPU's "GPU-..."; torch gives it bare
        # (or, in some releases, already prefixed).
        spellings = [uuid] if uuid.startswith(UUID_PREFIXES) else [f"GPU-{uuid}", f"MIG-{uuid}"]
        for spelling in spellings:
            handle = _attempt(nvml.nvmlDeviceGetHandleByUUID, spelling)
            if handle is not None:
                return _text(_attempt(nvml.nvmlDeviceGetUUID, handle) or spelling)
        raise Unidentified(f"NVML knows no GPU with cuda:{index}'s UUID ({' or '.join(spellings)})")
    bus_id = pci_bus_id(properties)
    if bus_id is not None:
        handle = _attempt(nvml.nvmlDeviceGetHandleByPciBusId, bus_id)
        if handle is not None:
            _refuse_mig(nvml, handle, index, "its PCI bus id")
            found = _attempt(nvml.nvmlDeviceGetUUID, handle)
            if found is not None:
                return _text(found)
    visible = visible_devices(environ)
    if visible is not None and index < len(visible) and visible[index].startswith(UUID_PREFIXES):
        found = _uuid_by_prefix(nvml, visible[index])
        if found is not None:
            return found
        raise Unidentified(f"no single NVML GPU matches CUDA_VISIBLE_DEVICES entry {visible[index]!r} (cuda:{index})")
    raise Unidentified(
        f"cannot tell which NVML GPU is cuda:{index}: this torch reports neither its UUID nor its PCI bus id,"
        " and an index may name another GPU (CUDA_VISIBLE_DEVICES and CUDA's fastest-first order renumber"
        " GPUs); use a newer torch, or list GPU UUIDs in CUDA_VISIBLE_DEVICES"
    )


# Each GPU is identified once per process (the memory and energy samplers and every cell's placement ask
# again): what a GPU is does not change while a process runs. Keyed by what tells GPUs apart, so a process
# whose CUDA_VISIBLE_DEVICES changes asks again.
_IDENTIFIED: dict[tuple[Any, ...], str | Unidentified] = {}


def identify(nvml: Any, device: str, properties: Any, environ: Mapping[str, str]) -> str:
    """find_uuid, once per GPU per process; raises Unidentified with the reason."""
    key = (device, torch_uuid(properties), pci_bus_id(properties), environ.get("CUDA_VISIBLE_DEVICES"))
    if key not in _IDENTIFIED:
        try:
            _IDENTIFIED[key] = find_uuid(nvml, cuda_index(device), properties, environ)
        except Unidentified as error:
            _IDENTIFIED[key] = error
    found = _IDENTIFIED[key]
    if isinstance(found, Unidentified):
        raise found
    return found


def gpu_uuids(devices: list[str], environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], str | None]:
    """({device: NVML UUID}, None) for every GPU among `devices`, or ({}, the reason NVML cannot be used
    or a GPU cannot be identified)."""
    gpus = [device for device in devices if is_gpu(device)]
    if not gpus:
        return {}, f"the device is {', '.join(devices)}, not a CUDA GPU"
    try:
        import pynvml
    except ImportError:
        return {}, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as error:  # noqa: BLE001 - NVMLError, or a library that does not even load
        return {}, f"NVML is unavailable ({error})"
    import torch

    environ = os.environ if environ is None else environ
    uuids = {}
    for device in gpus:
        try:
            uuids[device] = identify(pynvml, device, torch.cuda.get_device_properties(cuda_index(device)), environ)
        except Unidentified as error:
            return {}, str(error)
    return uuids, None


def open_by_uuid(uuids: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    """pynvml and a handle per device, by the UUIDs gpu_uuids found; runs in the sampling process, which
    never imports torch."""
    import pynvml

    pynvml.nvmlInit()
    return pynvml, {device: pynvml.nvmlDeviceGetHandleByUUID(uuid) for device, uuid in uuids.items()}


def gpu_facts(device: str, properties: Any, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What NVML says about the GPU `device` (torch's `properties` of it) and its driver when a run
    starts, for the results file. Each fact that cannot be read is left out, with no error."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML: nothing to add; the memory probe says why
        return {}
    facts: dict[str, Any] = {}
    driver = _attempt(pynvml.nvmlSystemGetDriverVersion)
    if driver is not None:
        facts["gpu_driver"] = _text(driver)
    cuda_driver = _attempt(pynvml.nvmlSystemGetCudaDriverVersion)
    if isinstance(cuda_driver, int):  # 12040 is CUDA 12.4
        facts["cuda_driver_version"] = f"{cuda_driver // 1000}.{cuda_driver % 1000 // 10}"
    try:
        uuid = identify(pynvml, device, properties, os.environ if environ is None else environ)
    except Unidentified as error:
        facts["gpu_uuid_unavailable"] = str(error)
        return facts
    facts["gpu_uuid"] = uuid
    handle = _attempt(pynvml.nvmlDeviceGetHandleByUUID, uuid)
    if handle is None:
        return facts
    # Clocks and power limit at the start: a GPU held at lower clocks or power is slower, so a result is
    # reproduced only on a GPU set alike.
    readings = {
        "gpu_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "gpu_memory_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "gpu_power_limit_w": lambda: pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000,
        # A MIG instance is itself the answer; NVML reads the mode on whole GPUs only.
        "gpu_mig_mode": lambda: uuid.startswith("MIG-") or pynvml.nvmlDeviceGetMigMode(handle)[0] == _MIG_ENABLED,
    }
    for key, read in readings.items():
        value = _attempt(read)
        if value is not None:
            facts[key] = value
    return facts
