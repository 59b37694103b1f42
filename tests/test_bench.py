"""`minicoat bench --quick` runs end to end and writes a complete JSON report.

Only the shape of the report is checked: timings depend on the machine and its load, so no
test asserts anything about speed.
"""

import json

import pytest
import torch  # noqa: F401  the bench needs the oracle; CI always has it, never skip

from minicoat import bench
from minicoat.bench import machine as bench_machine

EXPECTED_ROWS = {
    ("matmul", "fwd"),
    *((name, mode) for name in (
        "depthwise_conv2d 3x3", "conv2d 3x3", "relative_attention pre",
        "relative_attention post", "MBConv block", "Transformer block",
    ) for mode in ("fwd", "fwd+bwd")),
}


def test_quick_bench_writes_every_row(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert bench.main(["--quick", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    rows = result["rows"]
    found = {(row["name"], row["mode"]) for row in rows}
    assert EXPECTED_ROWS <= found
    steps = [row for row in rows if row["mode"] == "step"]
    assert len(steps) == 2 and all(row["name"].startswith("train step") for row in steps)
    for row in steps:  # each framework's step measured again in a fresh process of its own
        assert row["rss_in_fresh_process"], row
        assert row["numpy_peak_mb_rss"] >= 0 and row["torch_peak_mb_rss"] >= 0, row
    for row in rows:
        assert row["numpy_ms"] > 0 and row["torch_ms"] > 0, row
        assert row["ratio"] > 0, row
        assert row["ratio"] == pytest.approx(row["numpy_ms"] / row["torch_ms"])
        if row["mode"] != "fwd" or row["name"] != "matmul":
            assert row["numpy_peak_mb_tracemalloc"] >= 0, row
    assert result["matmul_peak_gflops"]["numpy"] > 0 and result["matmul_peak_gflops"]["torch"] > 0
    machine = result["machine"]
    assert machine["torch_threads"] >= 1 and "numpy_blas_threads" in machine
    assert machine["numpy_blas_kernels"]  # "unknown" where NumPy's BLAS is not OpenBLAS
    assert machine["kernel_threads"] >= 1 and machine["implementation"] == "fast"
    assert machine["owned_cores"] == (machine["kernel_threads"] > 1)  # pip's NumPy: OpenBLAS
    for key in ("cpu_model", "cpu_vendor", "cpu_family", "cpu_model_number",
                "instruction_set", "cpu_kind"):
        assert key in machine
    printed = capsys.readouterr().out
    assert "| name | mode | shape | numpy ms | torch ms | numpy/torch" in printed
    assert "kernel threads" in printed and "implementation fast" in printed
    if machine["cpu_family"] is not None:  # an x86 /proc/cpuinfo
        family = f"family {machine['cpu_family']} model {machine['cpu_model_number']}"
        assert family in printed
    assert "train step coatnet-cifar" in printed


def test_blas_kernels_say_who_chose_them(monkeypatch):
    monkeypatch.setattr(bench_machine, "_numpy_openblas", lambda: {"architecture": "Haswell"})
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert bench_machine._numpy_blas_kernels() == "Haswell (forced by OPENBLAS_CORETYPE=Haswell)"
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert bench_machine._numpy_blas_kernels() == "Haswell (detected)"
    monkeypatch.setattr(bench_machine, "_numpy_openblas", lambda: None)  # MKL, no threadpoolctl
    assert bench_machine._numpy_blas_kernels() == "unknown"


INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq
"""


def test_cpu_kind_names_vendor_widest_instruction_set_family_and_model():
    cpu = bench_machine.cpu_from_cpuinfo(INTEL)
    assert cpu == {"cpu_model": "Intel(R) Xeon(R) Processor", "cpu_vendor": "GenuineIntel",
                   "cpu_family": 6, "cpu_model_number": 207,
                   "instruction_set": "avx512", "cpu_kind": "intel-avx512-f6m207"}
    # two AMD EPYCs of one model name, a Zen 4 and a Zen 5, are two kinds
    zen4 = (INTEL.replace("GenuineIntel", "AuthenticAMD").replace("\t: 6\n", "\t: 25\n")
            .replace("\t: 207\n", "\t: 17\n"))
    zen5 = zen4.replace("\t: 25\n", "\t: 26\n").replace("\t: 17\n", "\t: 2\n")
    assert bench_machine.cpu_from_cpuinfo(zen4)["cpu_kind"] == "amd-avx512-f25m17"
    assert bench_machine.cpu_from_cpuinfo(zen5)["cpu_kind"] == "amd-avx512-f26m2"
    amd_avx2 = zen5.replace(" avx512f avx512dq", "")
    assert bench_machine.cpu_from_cpuinfo(amd_avx2)["cpu_kind"] == "amd-avx2-f26m2"
    arm = "processor\t: 0\nCPU implementer\t: 0x41\nFeatures\t: fp asimd\n"
    assert bench_machine.cpu_from_cpuinfo(arm) == {
        "cpu_model": None, "cpu_vendor": "0x41", "cpu_family": None, "cpu_model_number": None,
        "instruction_set": "neon", "cpu_kind": "arm-neon"}
    assert bench_machine.cpu_from_cpuinfo("")["cpu_kind"] is None


def test_quick_scaling_covers_every_axis(tmp_path):
    path = tmp_path / "bench.json"
    assert bench.main(["--quick", "--scaling", "--only", "matmul", "--json", str(path)]) == 0
    scaling = json.loads(path.read_text())["scaling"]
    assert [len(scaling[axis]) for axis in ("batch", "image", "depth", "attention")] == [3, 2, 2, 2]
    for rows in scaling.values():
        for row in rows:
            assert row["numpy_ms"] > 0 and row["torch_ms"] > 0 and row["ratio"] > 0


def _step_profile_module():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "benchmarks" / "step_profile.py"
    spec = importlib.util.spec_from_file_location("step_profile", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_profile_adds_up_and_undoes_its_patches():
    import autograd.core

    from minicoat.kernels import autodiff
    from minicoat.ops import switch

    step_profile = _step_profile_module()
    kernels, node_init = dict(switch._kernels), autograd.core.VJPNode.__init__
    backward_pass = autodiff._backward_pass
    mean_ms, median_ms, table = step_profile.profile_step("coatnet-digits", 4, steps=2, warmup=1)
    by_name = {(part, name): ms for part, name, ms in table}
    assert mean_ms > 0 and median_ms > 0
    # the kernels' forwards and their VJPs are found by name, each with some time
    assert by_name[("forward", "batch_norm_gelu")] > 0
    assert by_name[("backward", "_batch_norm_gelu_train")] > 0
    assert by_name[("backward", "_matmul_last")] > 0
    assert by_name[("update", "(adamw)")] > 0
    assert all(ms >= 0 for ms in by_name.values())  # (rest) too: the parts do not overlap
    assert abs(sum(by_name.values()) - mean_ms) < 1e-6 * mean_ms
    assert switch._kernels == kernels and autograd.core.VJPNode.__init__ is node_init
    assert autodiff._backward_pass is backward_pass


def test_step_profile_counts_a_kernel_inside_another_once():
    import numpy as np

    from minicoat.ops import switch

    profile = _step_profile_module().StepProfile()
    try:  # a timed kernel calling the (timed) gelu kernel of the switch: one entry, the outer
        outer = profile._timed("outer", lambda x: switch._kernels["gelu"](x, "none"))
        outer(np.ones((2, 3, 3, 4), np.float32))
    finally:
        profile.close()
    assert set(profile.forward) == {"outer"} and profile.forward["outer"] > 0
