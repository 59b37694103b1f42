"""Peak memory and disk of the loaders on hostile input files ("bombs"), one table.

    python benchmarks/input_bombs.py            # the sizes of issue 15 (GBs inflated)
    python benchmarks/input_bombs.py --mib 512  # every bomb inflating to 512 MiB
    PYTHONPATH=/path/to/other/checkout python benchmarks/input_bombs.py   # another version

Each bomb is built by ``tests/bombs.py`` (in milliseconds, never inflated here) and loaded in
a fresh Python process, which reports its peak RSS (``ru_maxrss``) after importing minicoat
and at the end; "disk" is what the loader wrote next to the bomb.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import bombs  # noqa: E402

ISSUE_SIZES = {  # inflated bytes, as in the reports of issue 15
    "checkpoint-extra-member": 3 << 30,
    "checkpoint-listed-member": 3 << 30,
    "checkpoint-meta": 1 << 30,
    "idx-gzip": 2 << 30,
    "cifar-archive": 520_000 * bombs.CIFAR_RECORD,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=None, help="inflated size of every bomb")
    parser.add_argument("--only", choices=bombs.KINDS, action="append")
    args = parser.parse_args(argv)
    import minicoat

    print(f"minicoat from {Path(minicoat.__file__).parent}")
    print("| bomb | file | inflates to | peak RSS after import | peak RSS | grew | disk "
          "| outcome |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for kind in args.only or bombs.KINDS:
        n = args.mib << 20 if args.mib else ISSUE_SIZES[kind]
        with tempfile.TemporaryDirectory() as tmp:
            path, code = bombs.build(kind, tmp, n)
            size = path.stat().st_size
            before = bombs.disk_usage(tmp)
            r = bombs.measure(code)
            disk = bombs.disk_usage(tmp) - before
        print(f"| {kind} | {size / 2**20:.2f} MiB | {n / 2**20:,.0f} MiB | {r['base']:.0f} MiB "
              f"| {r['peak']:.0f} MiB | {r['grown']:.0f} MiB | {disk / 2**20:.1f} MiB "
              f"| {r['outcome'][:110]} |", flush=True)


if __name__ == "__main__":
    main()
