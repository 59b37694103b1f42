"""The course assignments: solutions pass, student stubs fail clearly, mistakes are named.

The notebooks and the generated autograder run in subprocesses with one BLAS / OpenMP thread
(as the autograder's conftest sets): the checks' arrays are tiny, and on a busy two-core
machine thread contention was measured to cost more than the work itself.
"""

import importlib.resources
import json
import os
import pathlib
import subprocess
import sys
import types
import xml.etree.ElementTree as ET

import autograd.numpy as anp
import nbformat
import numpy as np
import pytest

import minicoat as mc
from minicoat.assignments import build, checks
from minicoat.assignments.grading import Submission, code_cells, definitions
from minicoat.tree import tree_map

SOURCES = dict(build.default_sources())  # file name -> text
NAMES = [pathlib.PurePath(f).stem for f in SOURCES]
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def run_python(*args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, env={**os.environ, **ONE_THREAD},
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """A build with solutions, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("built")
    build.build(folder, solutions=True)
    return folder


def check_tests():
    """Autograder test names per assignment (one per check cell)."""
    assignments = [build.Assignment.read(f, text) for f, text in SOURCES.items()]
    return {a.name: sorted(build.check_names(a.notebook(False)).values()) for a in assignments}


def test_there_are_five_assignments_with_checks():
    assert NAMES == ["a1_depthwise_conv", "a2_relative_attention", "a3_mbconv",
                     "a4_training_step", "a5_transformer"]
    assert all(len(tests) >= 2 for tests in check_tests().values())


# -- (a) the solutions pass every check, hidden tests included ------------------------------

RUN_SOURCES = """
import contextlib, io, json, runpy, sys, traceback
results = {}
for path in sys.argv[1:]:
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        try:
            runpy.run_path(path, run_name="__main__")
            ok = True
        except BaseException:
            traceback.print_exc(file=output)
            ok = False
    results[path] = {"ok": ok, "output": output.getvalue()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def source_runs(tmp_path_factory):
    """Each solution source executed as a module (its check cells run as plain code)."""
    folder = importlib.resources.files("minicoat.assignments").joinpath("sources")
    paths = [str(folder.joinpath(f)) for f in SOURCES]
    result = run_python("-c", RUN_SOURCES, *paths, cwd=tmp_path_factory.mktemp("run"))
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout.splitlines()[-1])
    return {pathlib.PurePath(path).stem: run for path, run in runs.items()}


@pytest.mark.parametrize("name", NAMES)
def test_solution_source_passes_its_checks(source_runs, name):
    run = source_runs[name]
    assert run["ok"], run["output"]
    calls = SOURCES[f"{name}.py"].count("print(checks.check_")
    reports = [line for line in run["output"].splitlines() if "OK" in line or "->" in line]
    assert len(reports) >= calls, run["output"]  # every check ran, the hidden ones too


# -- (b) the generated autograder: the student version fails, the solutions pass ----------


def grade(out, submission, *extra):
    """Run the generated autograder on a folder: ``{test id: failure message or None}``."""
    report = out / f"report-{submission}.xml"
    result = run_python("-m", "pytest", str(out / "autograder"), "-p", "no:cacheprovider",
                        "--submission", str(out / submission), f"--junitxml={report}", *extra,
                        cwd=out)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        failure = case.find("failure")
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = (
            None if failure is None else failure.get("message"))
    return outcomes, result.stdout


def test_student_version_fails_every_check_as_not_implemented(out):
    outcomes, stdout = grade(out, "student")
    assert len(outcomes) == sum(len(t) for t in check_tests().values()), stdout
    for test, message in outcomes.items():
        assert message is not None, f"{test} passed on the student stubs"
        assert "not implemented yet: " in message, f"{test}: {message}"


def test_solution_version_passes_every_check(out):
    outcomes, stdout = grade(out, "solutions")
    assert len(outcomes) == sum(len(t) for t in check_tests().values()), stdout
    assert all(message is None for message in outcomes.values()), stdout


def test_pytest_marker_selects_one_assignment(out):
    outcomes, stdout = grade(out, "student", "-m", "a3")
    assert sorted(t.split("::")[1] for t in outcomes) == check_tests()["a3_mbconv"], stdout


# -- the generated files --------------------------------------------------------------------


def test_student_notebooks_have_stubs_no_hidden_tests_no_outputs(out):
    for name in NAMES:
        student = (out / "student" / f"{name}.py").read_text()
        assert "BEGIN SOLUTION" not in student and "HIDDEN TESTS" not in student
        assert "raise NotImplementedError(" in student and "# YOUR CODE HERE" in student
        for heading in ("**Learning objectives.**", "**Prerequisites.**", "**Time.**",
                        "## Exercises", "## Written questions", "YOUR ANSWER HERE"):
            assert heading in student, (name, heading)
        nb = nbformat.read(out / "student" / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code)
        checks_cells = [c for c in code if "check" in c.metadata.get("tags", [])]
        assert checks_cells and all(c.metadata["editable"] is False for c in checks_cells)
        autograder = (out / "autograder" / f"test_{name}.py").read_text()
        assert "BEGIN HIDDEN" not in autograder and f"pytest.mark.{name[:2]}" in autograder


def test_solution_notebooks_keep_markers_with_nbgrader_metadata(out):
    for name in NAMES:
        nb = nbformat.read(out / "solutions" / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        graded = [c.metadata["nbgrader"] for c in nb.cells if "nbgrader" in c.metadata]
        solution_cells = [m for m in graded if m["solution"]]
        grade_cells = [m for m in graded if m["grade"]]
        assert solution_cells and grade_cells
        assert all(m["schema_version"] == 3 and m["points"] >= 1 for m in grade_cells)
        answers = [c for c in nb.cells if c.cell_type == "markdown" and "nbgrader" in c.metadata]
        assert all(c.metadata["nbgrader"] == {  # nbgrader's manually graded answer cell
            "grade": True, "solution": True, "task": False, "locked": False, "points": 2,
            "schema_version": 3, "grade_id": c.metadata["nbgrader"]["grade_id"]}
            for c in answers)
        assert len(answers) >= 2 and all(len(c.source) > 100 for c in answers), name
        assert len({m["grade_id"] for m in graded}) == len(graded)  # nbgrader needs unique ids
        text = "".join(c.source for c in nb.cells)
        assert "### BEGIN SOLUTION" in text
    assert "### BEGIN HIDDEN TESTS" in (out / "solutions" / "a1_depthwise_conv.py").read_text()


SMALL = '''# %% [markdown]
# # A9 · Small

# %%
import numpy as np


def double(x):
    """Twice x."""
    ### BEGIN SOLUTION
    # HINT: multiply by two
    return 2 * x
    ### END SOLUTION


def total(xs):
    out = 0
    for x in xs:
        ### BEGIN SOLUTION
        out += x
        ### END SOLUTION
    return out


# %%
### BEGIN SOLUTION
# HINT: set answer to 42
answer = 42
### END SOLUTION

# %% tags=["check"]
assert double(2) == 4 and total([1, 2]) == 3
### BEGIN HIDDEN TESTS
assert answer == 42
### END HIDDEN TESTS
'''


def test_stubs_keep_indentation_and_hints():
    student = build.render(SMALL, "small.py", student=True)
    assert '    # YOUR CODE HERE\n    raise NotImplementedError("multiply by two")\n' in student
    assert '        raise NotImplementedError("replace this line with your code")\n' in student
    assert '\nraise NotImplementedError("set answer to 42")\n' in student  # a top-level cell
    assert "answer == 42" not in student and "return 2 * x" not in student
    assert build.render(SMALL, "small.py", student=False) == SMALL
    namespace = {}
    with pytest.raises(NotImplementedError, match="set answer to 42"):
        exec(compile(student, "small.py", "exec"), namespace)
    with pytest.raises(NotImplementedError, match="multiply by two"):
        namespace["double"](1)


def test_submission_reports_the_unfinished_cell_a_check_needs(tmp_path):
    build.build(tmp_path / "out", sources=[_write(tmp_path / "a9_small.py", SMALL)])
    student = tmp_path / "out" / "student"
    (student / "a9_small.ipynb").unlink()  # grade the .py twin
    with (student / "a9_small.py").open("a") as f:
        f.write("\n# %%\n# %matplotlib inline\n")  # a magic: skipped, not a syntax error
    submission = Submission.load(student, "a9_small")
    with pytest.raises(checks.CheckFailed, match="not implemented yet: set answer to 42"):
        submission.run_check("print(answer)", "a9 check")
    grader = (tmp_path / "out" / "autograder" / "test_a9_small.py").read_text()
    assert "assert answer == 42" in grader and "def test_cell_" in grader


# -- (c) the generator's errors -------------------------------------------------------------


def _write(path, text):
    path.write_text(text)
    return path


def _lines(*lines):
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, line, message", [
    (_lines("# %%", "x = 1", "### END SOLUTION"), 3, "without a matching '### BEGIN SOLUTION'"),
    (_lines("# %%", "def f():", "    ### BEGIN SOLUTION", "    return 1"), 3, "not closed"),
    (_lines("# %%", "### BEGIN SOLUTION", "x = 1", "# %%", "### END SOLUTION"), 2,
     "not closed before the cell that starts at line 4"),
    (_lines("# %%", "### BEGIN SOLUTION", "### BEGIN SOLUTION", "### END SOLUTION"), 3,
     "inside the solution region opened at line 2"),
    (_lines("# %%", "## BEGIN SOLUTION", "x = 1", "## END SOLUTION"), 2, "malformed marker"),
    (_lines("# %%", "### BEGIN SOLUTIONS", "x = 1"), 2, "malformed marker"),
    (_lines("# %% tags=[\"check\"]", "### BEGIN HIDDEN TESTS", "### END SOLUTION"), 3,
     "the hidden region of line 2 is open"),
    (_lines("# %%", "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"), 2, "check cell"),
    (_lines("# %% [markdown]", "### BEGIN SOLUTION", "### END SOLUTION"), 2, "markdown cell"),
])
def test_misplaced_markers_name_file_and_line(tmp_path, text, line, message):
    source = _write(tmp_path / "a9_broken.py", text)
    with pytest.raises(ValueError, match=f"a9_broken.py:{line}: ") as err:
        build.build(tmp_path / "out", sources=[source])
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_non_empty_out_needs_force(tmp_path):
    out = tmp_path / "out"
    (out / "autograder").mkdir(parents=True)
    (out / "autograder" / "test_stale.py").write_text("")
    result = run_python("-m", "minicoat.assignments", "build", str(out), cwd=tmp_path)
    assert result.returncode == 2
    assert "is not empty" in result.stderr and "--force" in result.stderr
    assert build.main(["build", str(out), "--force"]) == 0
    assert not (out / "autograder" / "test_stale.py").exists()  # --force replaced the folder
    assert (out / "student" / "a1_depthwise_conv.ipynb").is_file()
    assert not (out / "solutions").exists()


# -- mutations: classic mistakes are caught and named ---------------------------------------


def solution(name):
    """The definitions of a solution source, as the autograder takes them (no checks run)."""
    import jupytext

    nb = jupytext.reads(SOURCES[f"{name}.py"], fmt="py:percent")
    namespace = {}
    for number, _, source in code_cells(nb):
        for statement in definitions(number, source)[0]:
            exec(compile(statement, name, "exec"), namespace)
    return namespace


def rebound(fn, **names):
    """``fn`` with some of the global names its code sees replaced (a mutant)."""
    return types.FunctionType(fn.__code__, {**fn.__globals__, **names}, fn.__name__,
                              fn.__defaults__, fn.__closure__)


def test_unflipped_kernel_in_the_vjp_is_named_as_the_x_gradient():
    a1 = solution("a1_depthwise_conv")

    def vjp(x, w, g, stride):
        dw = a1["depthwise_conv2d_vjp"](x, w, g, stride)[1]
        return a1["depthwise_conv2d"](g, w, 1), dw  # forgot the flip: w[::-1, ::-1]

    with pytest.raises(checks.CheckFailed) as err:
        checks.check_depthwise_vjp(vjp)
    message = str(err.value)
    assert "gradient w.r.t. x: error" in message and "gradient w.r.t. w" not in message
    assert "the kernel not flipped" in message


def test_flipped_kernel_in_the_forward_is_named():
    conv = solution("a1_depthwise_conv")["depthwise_conv2d"]
    with pytest.raises(checks.CheckFailed, match="output: error .* kernel flipped"):
        checks.check_depthwise_forward(lambda x, w, s: conv(x, w[::-1, ::-1], s))


def _attention(axis=-1, scale=True):
    """Relative attention with a possible mistake, written with autograd.numpy."""
    index = solution("a2_relative_attention")["relative_position_index"]

    def layer(x, p, heads, variant):
        n, h, w, c = x.shape
        qkv = anp.reshape(x, (n, h * w, c)) @ p["w_qkv"] + p["b_qkv"]
        q, k, v = (anp.transpose(anp.reshape(t, (n, h * w, heads, -1)), (0, 2, 1, 3))
                   for t in anp.split(qkv, 3, axis=-1))
        bias = p["rel_bias"][:, index(h, w)]
        logits = q @ anp.swapaxes(k, -1, -2) * (q.shape[-1] ** -0.5 if scale else 1.0)
        weights = mc.softmax(logits + bias, axis=axis)
        out = anp.reshape(anp.transpose(weights @ v, (0, 2, 1, 3)), (n, h * w, -1))
        return anp.reshape(out @ p["w_out"] + p["b_out"], (n, h, w, -1))
    return layer


def test_attention_mistakes_are_named():
    assert "OK" in checks.check_relative_attention(_attention(), "pre")
    with pytest.raises(checks.CheckFailed, match="output: error .* softmax over the queries"):
        checks.check_relative_attention(_attention(axis=-2), "pre")
    with pytest.raises(checks.CheckFailed, match="without the 1/sqrt.d. scale"):
        checks.check_relative_attention(_attention(scale=False), "pre")
    with pytest.raises(checks.CheckFailed, match="'pre' variant"):  # pre where post is due
        checks.check_relative_attention(_attention(), "post")


def test_in_place_assignment_is_told_to_use_autograd_numpy():
    attention = solution("a2_relative_attention")["relative_attention"]

    def layer(x, p, heads, variant):
        y = attention(x, p, heads, variant)
        out = np.empty(np.shape(y))
        out[...] = y  # fine on arrays, impossible for autograd's traced values
        return out

    with pytest.raises(checks.CheckFailed, match="autograd could not differentiate"):
        checks.check_relative_attention(layer, "pre")


def test_mbconv_without_shortcut_is_named():
    a3 = solution("a3_mbconv")

    def block(p, state, x, stride, cfg, train):
        y, new_state = a3["mbconv_forward"](p, state, x, stride, cfg, train)
        return y - a3["shortcut"](p, x, stride, cfg.pool), new_state

    with pytest.raises(checks.CheckFailed, match="without its shortcut"):
        checks.check_mbconv(block)


def test_adamw_mistakes_are_named():
    update = solution("a4_training_step")["adamw_update"]
    assert "OK" in checks.check_adamw_update(update)
    every_leaf = rebound(update, decay_mask=lambda params: tree_map(lambda _: True, params))
    with pytest.raises(checks.CheckFailed, match="decaying every leaf"):
        checks.check_adamw_update(every_leaf)

    def in_place(params, grads, state, lr, **hyper):
        new_params, new_state = update(params, grads, state, lr, **hyper)
        params["head"]["w"][...] = new_params["head"]["w"]  # p -= ... on the caller's array
        return new_params, new_state

    with pytest.raises(checks.CheckFailed, match=r"changed its input params\['head.w'\] in place"):
        checks.check_adamw_update(in_place)


def test_mutated_submission_is_graded_with_the_gradient_named(out, tmp_path):
    """End to end: a student notebook whose VJP scatters with the kernel flipped."""
    text = (out / "solutions" / "a1_depthwise_conv.py").read_text()
    correct = "dx_pad[:, rows, cols] += g * w[di, dj]"
    assert correct in text
    _write(tmp_path / "a1_depthwise_conv.py",
           text.replace(correct, "dx_pad[:, rows, cols] += g * w[k - 1 - di, k - 1 - dj]"))
    grader = build.Assignment.read("a1_depthwise_conv.py", SOURCES["a1_depthwise_conv.py"])
    nb = grader.notebook(student=False)
    cells = {test: build.without_markers(nb.cells[i].source)
             for i, test in build.check_names(nb).items()}
    submission = Submission.load(tmp_path, "a1_depthwise_conv")
    submission.run_check(cells["test_depthwise_forward"], "forward")  # still right
    with pytest.raises(checks.CheckFailed, match="gradient w.r.t. x: error .* not flipped"):
        submission.run_check(cells["test_depthwise_vjp"], "vjp")


def test_hand_written_vjp_mistakes_are_named():
    a5, a3 = solution("a5_transformer"), solution("a3_mbconv")

    def constant_statistics(x, gamma, beta, g):  # forgot that mean and variance depend on x
        dx, dgamma, dbeta = a5["layer_norm_vjp"](x, gamma, beta, g)
        return g * gamma / anp.sqrt(x.var(-1, keepdims=True) + 1e-5), dgamma, dbeta

    with pytest.raises(checks.CheckFailed, match="gradient w.r.t. x: .* as if mean and variance"):
        checks.check_layer_norm_vjp(constant_statistics)

    def bias_of_one_image(q, k, v, bias, g):
        dq, dk, dv, dbias = a5["attention_core_vjp"](q, k, v, bias, g)
        return dq, dk, dv, a5["attention_core_vjp"](q[:1], k[:1], v[:1], bias, g[:1])[3]

    with pytest.raises(checks.CheckFailed, match="without the sum over the batch"):
        checks.check_attention_core_vjp(bias_of_one_image)

    def batch_norm_constants(x, gamma, g):
        dx, dgamma, dbeta = a3["batch_norm_vjp"](x, gamma, g)
        return g * gamma / anp.sqrt(x.var((0, 1, 2)) + 1e-5), dgamma, dbeta

    with pytest.raises(checks.CheckFailed, match="as if the batch mean and variance"):
        checks.check_batch_norm_vjp(batch_norm_constants)
    assert "OK" in checks.check_batch_norm_vjp(a3["batch_norm_vjp"])


def test_transformer_block_without_ffn_is_named():
    def attention_half_only(p, x, stride, heads, cfg):  # forgot x <- x + FFN(LN(x))
        pool = mc.max_pool2d if cfg.pool == "max" else mc.avg_pool2d
        h, shortcut = mc.layer_norm(x, **p["norm1"]), x
        if stride == 2:
            h, shortcut = pool(h), pool(x)
        if "proj" in p:
            shortcut = mc.conv1x1(shortcut, p["proj"]["w"], p["proj"]["b"])
        return shortcut + mc.relative_attention(h, p["attn"], heads, cfg.variant)

    with pytest.raises(checks.CheckFailed, match="without its FFN half"):
        checks.check_transformer_block(attention_half_only, stride=2, c_out=16)
