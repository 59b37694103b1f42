"""Grading grades the student: cheating submissions fail, under both graders.

The submissions, beside the correct, untouched and subtly wrong ones:

* "library": the graded functions call minicoat's own implementation (the public op, a
  tier's function, autograd of the op, ``blocks.mbconv_forward``, ``optim.adamw_update``);
* "overwritten checks": a cell replaces every ``checks.check_*`` with one returning "OK";
* "patched minicoat": a cell makes minicoat's references agree with a wrong answer;
* "patch at definition" / "patch inside the function": the same, from code that runs when
  the function is defined (a default argument) or called;
* under nbgrader, "input transformer": a cell that makes IPython skip every later cell.

Each is graded by the project's autograder (``minicoat.assignments.grading``) and by
``nbgrader autograde`` with ``IsolatedChecks`` (``OUT/nbgrader_config.py``).
"""

import copy
import os
import pathlib
import shutil
import subprocess
import sys

import nbformat
import pytest

from minicoat.assignments import build
from minicoat.assignments.grading import ONE_THREAD, Submission

A1 = "a1_depthwise_conv"
OWN = "this check grades your own implementation"
CHANGED = "changed the library or the checks"
RIGHT_VJP = "dx_pad[:, rows, cols] += g * w[di, dj]"
WRONG_VJP = "dx_pad[:, rows, cols] += g * w[k - 1 - di, k - 1 - dj]"  # the kernel flipped

LIBRARY = {  # notebook -> a cell redefining its graded functions with the library's
    "a1_depthwise_conv": '''
import autograd
def depthwise_conv2d(x, w, stride=1):
    with mc.implementation("traced"):
        return mc.depthwise_conv2d(x, w, stride)
def depthwise_conv2d_vjp(x, w, g, stride=1):
    vjp, _ = autograd.make_vjp(lambda xw: mc.depthwise_conv2d(xw[0], xw[1], stride))((x, w))
    return vjp(g)
''',
    "a2_relative_attention": '''
from minicoat.kernels.attention import attention_core as _fast_core
relative_position_index = mc.relative_position_index
def attention_core(q, k, v, bias, variant):
    return _fast_core(q, k, v, bias, variant)
''',
    "a3_mbconv": '''
from minicoat import blocks
def mbconv_forward(p, state, x, stride, cfg, train):
    record = make_block(cfg, "C", x.shape[-1], p["project"]["w"].shape[1], stride, x.shape[1:3])
    return blocks.mbconv_forward(p, state, x, record, cfg, train)
''',
    "a4_training_step": '''
import minicoat.optim
def adamw_update(params, grads, opt_state, lr, **hyper):
    return minicoat.optim.adamw_update(params, grads, opt_state, lr, mask=decay_mask, **hyper)
''',
    "a5_transformer": '''
import autograd
from minicoat import blocks
from minicoat.plans import make_block
def layer_norm(x, gamma, beta):
    return mc.layer_norm(x, gamma, beta)
def layer_norm_vjp(x, gamma, beta, g):
    return autograd.grad(lambda a: anp.sum(layer_norm(*a) * g))((x, gamma, beta))
def attention_core_vjp(q, k, v, bias, g):
    vjp, _ = autograd.make_vjp(lambda a: mc.attention_core(*a, "pre"))((q, k, v, bias))
    return vjp(g)
def transformer_block(p, x, stride, heads, cfg):
    record = make_block(cfg, "T", x.shape[-1], p["norm2"]["gamma"].shape[0], stride, x.shape[1:3])
    return blocks.transformer_forward(p, x, record, cfg)
''',
}
OVERWRITE_CHECKS = '''
for _name in dir(checks):
    if _name.startswith("check_"):
        setattr(checks, _name, lambda *args, **kwargs: "OK")
checks.CheckFailed = type("Never", (Exception,), {})
'''
PATCH_MINICOAT = '''
import minicoat.ops.conv
mc.depthwise_conv2d = lambda x, w, stride=1: depthwise_conv2d(x, w, stride)
minicoat.ops.conv.depthwise_conv2d_backward = lambda g, x, w, stride=1: (
    *depthwise_conv2d_vjp(x, w, g, stride), None)
mc.rel_error = lambda *args: 0.0
'''
PATCH_AT_DEFINITION = '''
import minicoat.assignments.checks.common as _common
def helper(_=setattr(_common, "_error", lambda *args, **kwargs: 0.0)):
    return None
'''
PATCH_INSIDE = '''
_right_vjp = depthwise_conv2d_vjp
def depthwise_conv2d_vjp(x, w, g, stride=1):
    import minicoat.assignments.checks.common as common
    common._mismatch = lambda *args, **kwargs: None
    return _right_vjp(x, w, g, stride)
'''
INPUT_TRANSFORMER = '''
get_ipython().input_transformers_cleanup.append(lambda lines: ["pass\\n"])
'''


def submission(base, kind, name=A1):
    """A copy of notebook ``base`` (solutions filled in) turned into a submission of ``kind``."""
    nb = copy.deepcopy(base)
    extra = {"library": LIBRARY.get(name), "overwritten checks": OVERWRITE_CHECKS,
             "patched minicoat": PATCH_MINICOAT, "patch at definition": PATCH_AT_DEFINITION,
             "patch inside the function": PATCH_INSIDE,
             "input transformer": INPUT_TRANSFORMER}.get(kind)
    if kind in ("subtly wrong", "overwritten checks", "patched minicoat", "input transformer"):
        found = [c for c in nb.cells if RIGHT_VJP in c.source]
        assert len(found) == 1
        found[0].source = found[0].source.replace(RIGHT_VJP, WRONG_VJP)
    if extra:
        first_check = next(i for i, c in enumerate(nb.cells) if "print(checks." in c.source)
        # after the definitions it needs, before the first check cell
        at = len(nb.cells) if kind in ("library", "patch inside the function") else first_check
        nb.cells.insert(at, nbformat.v4.new_code_cell(extra.strip() + "\n"))
    return nb


# Expected grades: test name suffix -> passed? (A1 has two graded cells: forward, vjp)
EXPECTED = {
    "correct": {"forward": True, "vjp": True},
    "untouched": {"forward": False, "vjp": False},
    "subtly wrong": {"forward": True, "vjp": False},
    "library": {"forward": False, "vjp": False},
    "overwritten checks": {"forward": True, "vjp": False},  # as subtly wrong: no effect
    "patched minicoat": {"forward": True, "vjp": False},  # as subtly wrong: no effect
    "patch at definition": {"forward": False, "vjp": False},
    "patch inside the function": {"forward": True, "vjp": False},
}
MESSAGE = {"untouched": "not implemented yet", "subtly wrong": "not flipped", "library": OWN,
           "overwritten checks": "not flipped", "patched minicoat": "not flipped",
           "patch at definition": CHANGED, "patch inside the function": CHANGED}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    folder = tmp_path_factory.mktemp("built")
    build.build(folder, solutions=True)
    return folder


def autograder_checks(out, name):
    """What OUT/autograder/test_<name>.py holds: ``{label: check cell code}``."""
    text = (out / "solutions" / f"{name}.py").read_text()
    nb = build.Assignment.read(f"{name}.py", text).notebook(student=False)
    return {f"{name}, {test}": build.without_markers(nb.cells[i].source)
            for i, test in build.check_names(nb).items()}


def grade(folder, nb, name, out):
    """The project's autograder on one notebook: ``{test: failure message or None}``."""
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{name}.ipynb")
    results = Submission.load(folder, name).grade(autograder_checks(out, name))
    return {label.split(", ")[1]: error for label, error in results.items()}


def _base(out, name, version="solutions"):
    return nbformat.read(out / version / f"{name}.ipynb", as_version=4)


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_autograder_grades_a1_submission(out, tmp_path, kind):
    base = _base(out, A1, "student" if kind == "untouched" else "solutions")
    results = grade(tmp_path / "sub", submission(base, kind), A1, out)
    passed = {test.split("_")[-1]: error is None for test, error in results.items()}
    assert passed == EXPECTED[kind], results
    for error in filter(None, results.values()):
        assert MESSAGE[kind] in error, error


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_autograder_fails_library_calls_in_every_assignment(out, tmp_path, name):
    results = grade(tmp_path / "sub", submission(_base(out, name, "student"), "library", name),
                    name, out)
    assert results and all(error is not None for error in results.values()), results
    cheated = [e for e in results.values() if OWN in e]
    assert cheated, results  # the cheating functions are named as such, the stubs as stubs
    assert all(OWN in e or "not implemented yet" in e for e in results.values()), results


# -- nbgrader ------------------------------------------------------------------------------


def nbgrader(*args, cwd):
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=cwd,
                            env={**os.environ, **ONE_THREAD}, capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def filled(release, source):
    """The released notebook with each solution cell completed from the instructor's one."""
    solutions = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
    nb = copy.deepcopy(release)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution") and grade_id in solutions:
            cell.source = solutions[grade_id]
    return nb


NBGRADER_KINDS = [*EXPECTED, "input transformer"]


@pytest.fixture(scope="module")
def nbgrader_course(out, tmp_path_factory):
    """A course graded by ``nbgrader autograde`` with OUT/nbgrader_config.py."""
    course = tmp_path_factory.mktemp("course")
    shutil.copy(out / "nbgrader_config.py", course)
    (course / "source" / A1).mkdir(parents=True)
    shutil.copy(out / "solutions" / f"{A1}.ipynb", course / "source" / A1)
    nbgrader("generate_assignment", A1, "--force", cwd=course)
    release = nbformat.read(course / "release" / A1 / f"{A1}.ipynb", as_version=4)
    correct = filled(release, _base(out, A1))
    students = {}
    for number, kind in enumerate(NBGRADER_KINDS):
        student = f"s{number}"
        students[kind] = student
        nb = release if kind == "untouched" else submission(correct, kind)
        (course / "submitted" / student / A1).mkdir(parents=True)
        nbformat.write(nb, course / "submitted" / student / A1 / f"{A1}.ipynb")
    log = nbgrader("autograde", A1, "--force", cwd=course)
    return course, students, log


def nbgrader_grades(course, student):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        nb = gb.find_submission_notebook(A1, A1, student)
        scores = {g.name.split("_")[-1]: g.score for g in nb.grades if "-test_" in g.name}
    autograded = nbformat.read(course / "autograded" / student / A1 / f"{A1}.ipynb", 4)
    errors = [o.evalue for c in autograded.cells for o in c.get("outputs", [])
              if o.output_type == "error" and c.metadata.get("nbgrader", {}).get("grade")]
    return scores, errors


@pytest.mark.parametrize("kind", NBGRADER_KINDS)
def test_nbgrader_grades_a1_submission(nbgrader_course, kind):
    course, students, _ = nbgrader_course
    scores, errors = nbgrader_grades(course, students[kind])
    expected = EXPECTED.get(kind, EXPECTED["subtly wrong"])  # the transformer changes nothing
    assert {test: score == 1.0 for test, score in scores.items()} == expected, (scores, errors)
    for error in errors:
        assert MESSAGE.get(kind, "not flipped") in error or (
            kind == "untouched" and "not implemented yet" in error), error


def test_nbgrader_checksum_warning_is_the_known_one(nbgrader_course):
    """jupyter/nbgrader#1961: autograde warns that the test cells' checksums changed (it
    restores their hidden tests); docs/teaching.md says so. Grades are unaffected (above)."""
    log = nbgrader_course[2]
    assert "Attribute 'checksum' for cell a1-test_depthwise_vjp has changed!" in log


def test_build_writes_the_nbgrader_config(out):
    text = (out / "nbgrader_config.py").read_text()
    assert "configure(c)" in text
    namespace = {"get_config": __import__("traitlets.config").config.Config}
    exec(compile(text, "nbgrader_config.py", "exec"), namespace)
    steps = [p.__name__ for p in namespace["c"].Autograde.autograde_preprocessors]
    assert steps[steps.index("Execute") + 1] == "IsolatedChecks"
    assert pathlib.Path(out / "nbgrader_config.py").is_file()
