"""What the installed llama.cpp was built with, and what this CPU can run."""

from __future__ import annotations

import contextlib
import platform
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Instruction sets worth naming in a bug report, as the kernel spells them in /proc/cpuinfo.
_CPU_FLAGS_OF_INTEREST = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
)


@dataclass(frozen=True)
class BuildInfo:
    """llama.cpp's own account of its build: `llama_print_system_info()` parsed."""

    text: str
    """The raw system-info line."""
    features: dict[str, str]
    """Feature name → value as reported (e.g. ``{"AVX2": "1", "AMX_INT8": "1"}``)."""
    backends: list[str]
    """Compiled backends named in the line (``CPU``, ``CUDA``, ``Metal``, ...)."""
    gpu_offload: bool
    """Whether llama.cpp can offload layers to a GPU in this build."""

    @property
    def has_amx(self) -> bool:
        """Whether the build holds AMX code (which faults on some virtual machines that advertise it)."""
        return any(name.startswith("AMX") and value == "1" for name, value in self.features.items())


def build_info() -> BuildInfo:
    """Ask the installed llama.cpp what it was built with."""
    import llama_cpp

    llama_cpp.llama_backend_init()
    text = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
    features: dict[str, str] = {}
    backends: list[str] = []
    # e.g. "CPU : SSE3 = 1 | AVX = 1 | ... | CUDA : ARCHS = 900 | USE_GRAPHS = 1 | "
    for part in text.split("|"):
        part = part.strip()
        if not part:
            continue
        if " : " in part:
            backend, part = part.split(" : ", 1)
            backends.append(backend.strip())
        name, _, value = part.partition("=")
        if name.strip():
            features[name.strip()] = value.strip()
    return BuildInfo(text, features, backends, bool(llama_cpp.llama_supports_gpu_offload()))


@dataclass(frozen=True)
class CpuInfo:
    """The processor tokenlab runs on."""

    machine: str
    model: str
    flags: list[str]
    """Instruction sets of interest that the CPU advertises."""
    logical_cores: int
    usable_cores: int
    """Cores this process may run on (its affinity mask)."""


def cpu_info() -> CpuInfo:
    """Model name, instruction sets and core counts of this machine."""
    import os

    model = platform.processor() or ""
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    with contextlib.suppress(OSError):
        text = cpuinfo.read_text(errors="replace")
        if found := re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE):
            model = found.group(1).strip()
        if found := re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE):
            flags = set(found.group(1).split())
    logical = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = logical
    return CpuInfo(
        machine=platform.machine(),
        model=model,
        flags=[flag for flag in _CPU_FLAGS_OF_INTEREST if flag in flags],
        logical_cores=logical,
        usable_cores=usable,
    )


_params_lock = threading.RLock()  # re-entrant: a load may hold both wraps below


@contextlib.contextmanager
def without_extra_buffer_types() -> Iterator[None]:
    """While active, models that llama_cpp.Llama loads have extra buffer types off.

    llama.cpp runs its AMX matmul (and weight repacking) through "extra buffer types"; llama_cpp.Llama
    does not expose the switch, so its default-params factory is wrapped for the duration of a load.
    """
    import llama_cpp.llama_cpp as low_level

    with _params_lock:
        original = low_level.llama_model_default_params

        def default_params():  # noqa: ANN202 - a ctypes struct
            params = original()
            params.use_extra_bufts = False
            return params

        low_level.llama_model_default_params = default_params
        try:
            yield
        finally:
            low_level.llama_model_default_params = original


FLASH_ATTENTION_MODES = {None: -1, True: 1, False: 0}
"""EngineOptions.flash_attention → llama.cpp's flash_attn_type (AUTO, ENABLED, DISABLED)."""


@contextlib.contextmanager
def flash_attention(enabled: bool | None) -> Iterator[None]:
    """While active, contexts that llama_cpp.Llama creates use flash attention `enabled`.

    None is llama.cpp's own default (AUTO: on wherever the device running attention supports it),
    which llama_cpp.Llama cannot pass (it offers on or off), so its context constructor is wrapped for
    the duration of a load, like the model parameters above.
    """
    import llama_cpp._internals as internals

    mode = FLASH_ATTENTION_MODES[enabled]
    with _params_lock:
        original = internals.LlamaContext

        def context(*args: object, params: object, **kwargs: object) -> object:
            params.flash_attn_type = mode  # type: ignore[attr-defined]
            return original(*args, params=params, **kwargs)

        internals.LlamaContext = context  # type: ignore[assignment,misc]
        try:
            yield
        finally:
            internals.LlamaContext = original  # type: ignore[misc]
