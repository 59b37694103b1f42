"""Put two ``minicoat bench --json`` results side by side as a Markdown table.

    python benchmarks/compare.py BEFORE.json AFTER.json

For each row present in both: NumPy time before and after, the speed-up, torch's time in each
run (a check that the machine behaved alike), and the NumPy / torch ratio before and after.
"""

import json
import sys


def _rows(path):
    with open(path) as f:
        result = json.load(f)
    return {(r["name"], r["mode"], r["shape"]): r for r in result["rows"]}, result["machine"]


def compare(before_path, after_path):
    before, machine_before = _rows(before_path)
    after, machine_after = _rows(after_path)
    lines = [
        f"before: {machine_before['date']} (load {machine_before.get('load_average_at_start')}), "
        f"after: {machine_after['date']} (load {machine_after.get('load_average_at_start')})\n",
        "| name | mode | shape | numpy ms before | numpy ms after | speed-up | torch ms before "
        "| torch ms after | numpy/torch before | numpy/torch after | numpy MB before "
        "| numpy MB after | torch MB after |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, new in after.items():
        old = before.get(key)
        if old is None:
            continue

        def mb(row, field):
            value = row.get(field)
            return "-" if value is None else f"{value:.1f}"

        lines.append(
            f"| {new['name']} | {new['mode']} | {new['shape']} | {old['numpy_ms']:.1f} | "
            f"{new['numpy_ms']:.1f} | {old['numpy_ms'] / new['numpy_ms']:.2f}x | "
            f"{old['torch_ms']:.1f} | {new['torch_ms']:.1f} | {old['ratio']:.2f} | "
            f"{new['ratio']:.2f} | {mb(old, 'numpy_peak_mb_tracemalloc')} | "
            f"{mb(new, 'numpy_peak_mb_tracemalloc')} | {mb(new, 'torch_peak_mb_rss')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(compare(sys.argv[1], sys.argv[2]))
