"""The Markdown tables of ``minicoat bench``: the main table, its header, the scaling tables."""

from .rows import PRESET


def _fmt(value, spec=".1f"):
    return "-" if value is None else format(value, spec)


def _rate(row, fw):
    if f"{fw}_gflops" not in row:
        return "-"
    return f"{row[f'{fw}_gflops']:.1f} ({row[f'{fw}_pct_of_matmul_peak']:.0f}%)"


def format_table(rows):
    """The main table as Markdown (``readable ms``: NumPy without the kernels, if measured)."""
    lines = [
        "| name | mode | shape | numpy ms | torch ms | numpy/torch | readable ms | readable/fast "
        "| numpy MB (tracemalloc) | numpy MB (RSS) | torch MB (RSS) | numpy GFLOP/s (% peak) "
        "| torch GFLOP/s (% peak) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        readable_ms = r.get("readable_ms")
        speedup = None if readable_ms is None else readable_ms / r["numpy_ms"]
        lines.append(
            f"| {r['name']} | {r['mode']} | {r['shape']} | {r['numpy_ms']:.2f} | "
            f"{r['torch_ms']:.2f} | {r['ratio']:.2f} | {_fmt(readable_ms, '.2f')} | "
            f"{_fmt(speedup, '.2f')} | {_fmt(r.get('numpy_peak_mb_tracemalloc'))} "
            f"| {_fmt(r.get('numpy_peak_mb_rss'))} | {_fmt(r.get('torch_peak_mb_rss'))} | "
            f"{_rate(r, 'numpy')} | {_rate(r, 'torch')} |"
        )
    return "\n".join(lines)


def format_scaling(scaling):
    """The scaling tables as Markdown."""
    out = []
    for axis, label in (("batch", "batch size"), ("image", "image size"), ("depth", "depths")):
        rows = scaling[axis]
        if not rows:
            continue
        first = rows[0]
        out += [
            f"\nTraining step of {PRESET} against {label}"
            + ("" if axis == "batch" else f" (batch {first['batch_size']})") + ":\n",
            f"| {label} | params | numpy ms | torch ms | numpy/torch | numpy ms / first "
            "| numpy MB (tracemalloc) | numpy MB (RSS) | torch MB (RSS) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            out.append(
                f"| {r[axis]} | {r['params']:,} | {r['numpy_ms']:.1f} | {r['torch_ms']:.1f} | "
                f"{r['ratio']:.2f} | {r['numpy_ms'] / first['numpy_ms']:.2f} | "
                f"{_fmt(r.get('numpy_peak_mb_tracemalloc'))} | {_fmt(r.get('numpy_peak_mb_rss'))} "
                f"| {_fmt(r.get('torch_peak_mb_rss'))} |"
            )
    rows = scaling["attention"]
    if rows:
        first = rows[0]
        out += [
            f"\nrelative_attention (pre) forward+backward against the grid ({first['batch_size']} "
            f"images, C = D = {first['channels']}, {first['heads']} heads):\n",
            "| grid | tokens T | T^2 / first | T^2 share of FLOPs | numpy ms | numpy ms / first "
            "| torch ms | torch ms / first | numpy/torch | numpy MB (tracemalloc) "
            "| torch MB (RSS) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            out.append(
                f"| {r['grid']}x{r['grid']} | {r['tokens']} | "
                f"{(r['tokens'] / first['tokens']) ** 2:.0f} | "
                f"{100 * r['quadratic_flop_share']:.0f}% | {r['numpy_ms']:.2f} | "
                f"{r['numpy_ms'] / first['numpy_ms']:.1f} | {r['torch_ms']:.2f} | "
                f"{r['torch_ms'] / first['torch_ms']:.1f} | {r['ratio']:.2f} | "
                f"{_fmt(r.get('numpy_peak_mb_tracemalloc'))} | {_fmt(r.get('torch_peak_mb_rss'))} |"
            )
    return "\n".join(out)


def _owned(info):
    if not info.get("owned_cores"):
        return ""
    return " (in a training step: OpenBLAS on 1 thread, the products split among them)"


def _family(info):
    if info.get("cpu_family") is None:
        return ""
    return f" family {info['cpu_family']} model {info.get('cpu_model_number')}"


def format_header(info, peak):
    return (
        f"minicoat bench, {info['date']}: {info['cpu_model']} ({info.get('cpu_vendor')}"
        f"{_family(info)}, "
        f"{info.get('instruction_set')}), {info['nproc']} cores, {info['ram_gb']} GB RAM; "
        f"numpy {info['numpy']} ({info['numpy_blas']}, "
        f"{info.get('numpy_blas_kernels', 'unknown')} kernels, BLAS threads "
        f"{info['numpy_blas_threads']}; kernel threads {info.get('kernel_threads')}"
        f"{_owned(info)}, "
        f"implementation {info.get('implementation')}), torch {info['torch']} (threads "
        f"{info['torch_threads']}), float32; load average {info['load_average_at_start']} at "
        f"the start, {info.get('load_average_at_end')} at the end.\n"
        f"Median of repeated runs after a warm-up; torch is the NCHW twin with the same weights. "
        f"Matmul peak (1024x1024 float32): numpy {peak['numpy']:.1f} GFLOP/s, "
        f"torch {peak['torch']:.1f} GFLOP/s. Peak RSS growth of a training step: each "
        f"framework in a fresh process of its own; of an op: in this process. "
        f"Allocator: glibc's defaults for both.\n"
    )
