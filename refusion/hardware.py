"""Defaults that fit the machine: the inference dtype and the number of CPU threads.

bfloat16 where the hardware computes it natively (CUDA with bf16 support, or a CPU with
AVX512-BF16 or AMX), float32 elsewhere: on a CPU without those instructions bf16 is emulated and
slower. Threads: as many as there are idle cores we may run on, at least one. OpenMP threads that
spin on cores another process is using were measured up to 24x slower than a single thread, so a
busy machine gets fewer threads. `--dtype` and `--threads` override both.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

import torch

from .decoding.options import Option
from .errors import RefusionError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 matrix products natively (oneDNN's check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_dtype(device: str | torch.device | None = None) -> torch.dtype:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else torch.float32


def resolve_dtype(name: str | None, device: str | torch.device | None = None) -> torch.dtype:
    """'auto' or None -> the machine's default; otherwise one of DTYPES by name."""
    if name in (None, "auto"):
        return default_dtype(device)
    if name not in DTYPES:
        raise RefusionError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_threads() -> int:
    """The cores we may use minus those other processes keep busy (1-minute load average), at least 1."""
    cores = usable_cores()
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, cores - busy)


# More threads than CPUs only slows a forward down, and tens of thousands crash the BLAS thread pool.
THREADS = Option("threads", "auto", "CPU threads", int, low=1, high=os.cpu_count() or 1, auto=True)


def set_threads(threads: int | str | None) -> int:
    """Apply a thread count ('auto'/None: `default_threads()`); returns the count in force."""
    count = THREADS.check(threads or "auto")
    if count == "auto":
        count = default_threads()
    torch.set_num_threads(count)
    return count


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
HEAP_BLOCKS_UP_TO = 32 * 2**20  # the most glibc takes on a 64-bit machine
FREED_MEMORY_KEPT = 256 * 2**20


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a forward frees for the next one: blocks up to 32 MB from its heap,
    and up to 256 MB of freed heap kept rather than handed back to the system.

    By default glibc maps a large block afresh for each allocation and trims its heap as soon as much is free, so
    a batch's forward, whose per-layer temporaries run to megabytes, faults its memory in page by page every
    time: 42,000-198,000 page faults for 16 rows of 48 tokens on the shipped model, against 15,600-18,300 (the
    heap's first growth) with freed memory kept (`python3 benchmarks/allocator.py`). Both settings or neither:
    fixing the trim threshold alone also fixes the map threshold at 128 kB, and every block past it is mapped
    afresh. Returns whether they were applied (glibc on Linux only)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO)) and bool(mallopt(M_TRIM_THRESHOLD, FREED_MEMORY_KEPT))


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), name)
    except OSError:
        return name
