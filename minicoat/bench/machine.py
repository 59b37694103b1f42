"""What ``minicoat bench`` ran on: CPU, instruction set, BLAS kernels, threads, versions.

``machine_info`` is the ``machine`` record of the JSON and the header of the table; its
``cpu_kind`` (say ``amd-avx512-f26m2``) names the record in ``benchmarks/`` (one per CPU kind).
"""

import datetime
import os
import platform

import numpy as onp

from ..kernels import threads as kernel_threads
from ..ops import implementation
from .rows import _torch

# the instruction sets that matter to NumPy's and torch's kernels, widest first
_ISA_FLAGS = (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"), ("neon", "asimd"))


def machine_info():
    """What the numbers were measured on: CPU, cores, memory, versions, threads."""
    torch = _torch()
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
        "cpu_vendor": None,
        "cpu_family": None,
        "cpu_model_number": None,
        "instruction_set": None,
        "cpu_kind": None,
        "ram_gb": None,
        "numpy": onp.__version__,
        "torch": torch.__version__,
        "autograd": _version("autograd"),
        "scipy": _version("scipy"),
        "torch_threads": torch.get_num_threads(),
        "numpy_blas": _blas_name(),
        "numpy_blas_threads": _numpy_blas_threads(),
        "numpy_blas_kernels": _numpy_blas_kernels(),
        "kernel_threads": kernel_threads.num_threads(),
        "owned_cores": kernel_threads.owns_cores(),  # in a step: OpenBLAS on 1, kernels split
        "implementation": implementation(),
        "thread_env": {k: v for k, v in os.environ.items() if k.endswith("_NUM_THREADS")},
        "load_average_at_start": _load_average(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info.update(cpu_from_cpuinfo(f.read()))
        info["ram_gb"] = round(_meminfo_kb("MemTotal") / 2**20, 1)
    except OSError:
        pass
    return info


def cpu_from_cpuinfo(text):
    """``cpu_model``, ``cpu_vendor``, family, model, ``instruction_set`` and ``cpu_kind``.

    From the first CPU that /proc/cpuinfo lists. The instruction set is the widest of avx512
    (``avx512f``), avx2, avx (x86 flags) or neon (arm ``asimd``); ``cpu_kind`` is vendor, set
    and x86 family and model, as ``amd-avx512-f26m2`` (a Zen 5) or ``intel-avx512-f6m207``:
    the name of a record in ``benchmarks/``. The family and model tell apart CPUs that share
    a model name (an ``AMD EPYC`` is a Zen 4 at family 25 and a Zen 5 at 26).
    """
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    isa = next((name for name, flag in _ISA_FLAGS if flag in flags), None)
    vendor = fields.get("vendor_id") or fields.get("CPU implementer")
    short = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "0x41": "arm"}.get(vendor, vendor)
    family, model = _integer(fields.get("cpu family")), _integer(fields.get("model"))
    generation = f"f{family}m{model}" if family is not None and model is not None else None
    kind = "-".join(part.lower() for part in (short, isa, generation) if part) or None
    return {"cpu_model": fields.get("model name"), "cpu_vendor": vendor,
            "cpu_family": family, "cpu_model_number": model,
            "instruction_set": isa, "cpu_kind": kind}


def _integer(text):
    """A decimal field of /proc/cpuinfo, or None where it is missing or not a number."""
    return int(text) if text is not None and text.isdigit() else None


def _load_average():
    """1-minute load average: above 0 other processes shared the cores (torch's threads then
    wait for each other and slow down far more than NumPy's single-threaded ufuncs)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _meminfo_kb(field):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def _blas_name():
    try:
        blas = onp.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # the layout of show_config is not a stable API
        return "unknown"


def _numpy_openblas():
    """NumPy's OpenBLAS as ``threadpoolctl`` reports it (kernel set, threads), or None."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for lib in threadpool_info():
        if lib.get("internal_api") == "openblas" and "numpy" in lib.get("filepath", ""):
            return lib
    return None


def _numpy_blas_threads():
    lib = _numpy_openblas()
    return lib["num_threads"] if lib else "unknown"


def _numpy_blas_kernels():
    """OpenBLAS's kernel set and who chose it: "SkylakeX (detected)", or "Haswell (forced by
    OPENBLAS_CORETYPE=Haswell)" when the environment overrides the detection."""
    lib = _numpy_openblas()
    if not lib:
        return "unknown"
    forced = os.environ.get("OPENBLAS_CORETYPE")
    how = f"forced by OPENBLAS_CORETYPE={forced}" if forced else "detected"
    return f"{lib.get('architecture')} ({how})"


