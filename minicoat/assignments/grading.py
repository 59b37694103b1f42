"""Grade a submitted notebook with checks it cannot reach: the runtime of the autograder.

The autograder (``OUT/autograder/test_<assignment>.py``, written by ``build``) holds the
notebook's check cells *with* their hidden tests. For each submission it

1. reads the student's notebook (``.ipynb``, or the paired ``.py``: whichever was saved last)
   and takes from its code cells, except the check cells, only the **definitions**: imports,
   functions, classes and constants (``EPS = 1e-5``). Other top-level code (a demo, a plot, a
   cell that replaces ``checks.check_*`` or patches minicoat) is not run;
2. starts a **fresh Python process** (``python -m minicoat.assignments.grading``), which
   imports minicoat and the checks from the installed package, records the identity of every
   attribute of minicoat, autograd, numpy and builtins (``checks.guard.Baseline``), then
   defines the student's functions, and
3. runs each check cell there, with ``checks`` bound to the real module whatever the notebook
   named ``checks``. Each call into the student's code has the tripwires of its check armed
   (``checks.guard``): calling the library's implementation of the graded thing fails the
   check, and so does a change to the library or the checks, found after each call and
   after each cell.

A check that fails because a name is missing is reported with the reason: the cell that
defines it failed or is unfinished ("not implemented yet: <hint>"), or the name is set by
top-level code, which the autograder does not run.
"""

import ast
import contextlib
import io
import json
import os
import pathlib
import re
import secrets
import subprocess
import sys
import tempfile
import traceback

from .checks import CheckFailed

MAGIC = re.compile(r"^(\s*)[%!]")  # IPython magics and shell escapes: skipped
TIMEOUT = 900  # seconds for the checks of one notebook
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


class Submission:
    """One student's notebook; ``grade`` runs check cells on its definitions, isolated."""

    def __init__(self, path, cells):
        self.path = path
        self.cells = cells  # [(cell number, first line, source)] of the non-check code cells
        self._results = {}

    @classmethod
    def load(cls, folder, name):
        """The notebook ``name`` (without extension) found in ``folder``, not executed yet."""
        path = find_notebook(folder, name)
        return cls(path, list(code_cells(path)))

    def grade(self, checks):
        """``{label: None (passed) or the failure message}`` for ``{label: check cell code}``.

        All the cells run in one fresh process (importing torch once); the results are kept,
        so ``result`` can report them one by one.
        """
        job = {"name": self.path.stem, "cells": self.cells, "checks": checks}
        self._results.update(run_isolated(job))
        return {label: self._results[label]["error"] for label in checks}

    def output(self, label):
        """What the check cell ``label`` printed (its reports), once graded."""
        return self._results[label]["output"]

    def result(self, label, code):
        """Raise ``CheckFailed`` with the message if the check cell ``label`` failed."""
        if label not in self._results:
            self.grade({label: code})
        error = self._results[label]["error"]
        if error is not None:
            raise CheckFailed(error)
        return self._results[label]["output"]

    def run_check(self, code, label):
        """Grade one check cell's code now (its own process); raise ``CheckFailed`` if it fails."""
        self._results.pop(label, None)
        return self.result(label, code)


def run_isolated(job):
    """Run ``job`` (the student's cells and the check cells) in a fresh process: the results."""
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory() as cwd:  # nothing importable beside the grader
        try:
            done = subprocess.run(
                [sys.executable, "-m", "minicoat.assignments.grading"],
                input=json.dumps({**job, "nonce": nonce}), capture_output=True, text=True,
                cwd=cwd, env={**os.environ, **ONE_THREAD}, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return _all_failed(job, f"the checks did not finish within {TIMEOUT} s")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(nonce):
            return json.loads(line[len(nonce):])
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return _all_failed(job, f"the grading process stopped (exit status {done.returncode}) "
                            f"before reporting: {tail}")


def _all_failed(job, message):
    return {label: {"error": message, "output": ""} for label in job["checks"]}


def find_notebook(folder, name):
    """``folder/name.ipynb`` or ``folder/name.py``; if both exist, the one saved last."""
    folder = pathlib.Path(folder)
    found = [p for p in (folder / f"{name}.ipynb", folder / f"{name}.py") if p.is_file()]
    if not found:
        raise FileNotFoundError(f"no {name}.ipynb or {name}.py in {folder.resolve()}")
    return max(found, key=lambda p: p.stat().st_mtime)


def is_check_cell(cell):
    """A check cell: tagged ``check`` (our builds) or an nbgrader autograded cell."""
    nbgrader = cell.metadata.get("nbgrader", {})
    return "check" in cell.metadata.get("tags", []) or (
        bool(nbgrader.get("grade")) and not nbgrader.get("solution"))


def code_cells(path_or_notebook):
    """``(cell number, first line, source)`` of each code cell that is not a check cell."""
    import jupytext  # imported here: only the autograder needs it

    notebook = path_or_notebook
    if isinstance(path_or_notebook, (str, pathlib.Path)):
        notebook = jupytext.read(path_or_notebook)
    for number, cell in enumerate(notebook.cells, start=1):
        if cell.cell_type != "code" or is_check_cell(cell):
            continue
        lines = [MAGIC.sub(r"\1pass  # ", line) for line in cell.source.splitlines()]
        first = next((line.strip() for line in lines if line.strip()), "")
        yield number, first[:60], "\n".join(lines) + "\n"


# -- taking the definitions out of a notebook -----------------------------------------------


def _constant(node):
    """Whether an assigned value is safe to evaluate: a literal, or a name or attribute."""
    if isinstance(node, (ast.Name, ast.Attribute)):
        return isinstance(node, ast.Name) or _constant(node.value)
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def _targets(node):
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    names = []
    for target in targets:
        for leaf in ast.walk(target) if target is not None else ():
            if isinstance(leaf, ast.Name):
                names.append(leaf.id)
    return names


def _stub_hint(node):
    """The hint of a top-level ``raise NotImplementedError("<hint>")``, else None."""
    if not isinstance(node, ast.Raise) or node.exc is None:
        return None
    exc = node.exc
    name = exc.func if isinstance(exc, ast.Call) else exc
    if not (isinstance(name, ast.Name) and name.id == "NotImplementedError"):
        return None
    args = exc.args if isinstance(exc, ast.Call) else []
    return args[0].value if args and isinstance(args[0], ast.Constant) else ""


def definitions(number, source):
    """The statements of one cell the grader runs, and what it notes about the others.

    Returns ``(statements, errors, skipped)``: ``statements`` a list of ``ast.Module`` of one
    definition each; ``errors`` ``[message]`` (a syntax error, an unfinished top-level stub);
    ``skipped`` the names assigned by top-level code that is not run.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        return [], [f"SyntaxError: {err.msg} (line {err.lineno})"], []
    statements, errors, skipped = [], [], []
    for node in tree.body:
        if isinstance(node, DEFINITIONS) or (
                isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None
                and _constant(node.value)):
            statements.append(ast.Module(body=[node], type_ignores=[]))
            continue
        hint = _stub_hint(node)
        if hint is not None:
            errors.append(f"not implemented yet: {hint or 'replace `raise NotImplementedError`'}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
            skipped += _targets(node) if not isinstance(node, (ast.For, ast.With)) else [
                leaf.id for leaf in ast.walk(node)
                if isinstance(leaf, ast.Name) and isinstance(leaf.ctx, ast.Store)]
    return statements, errors, skipped


# -- the isolated process -------------------------------------------------------------------


def _serve(job):
    """In the fresh process: define the student's code, run each check cell, report."""
    from . import checks
    from .checks.guard import Baseline

    baseline = Baseline.take()  # before any student code
    namespace = {"__name__": job["name"], "__builtins__": __builtins__}
    errors, skipped = [], {}
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        for number, line, source in job["cells"]:
            statements, problems, names = definitions(number, source)
            errors += [(number, line, p) for p in problems]
            skipped.update((name, number) for name in names)
            for statement in statements:
                try:
                    exec(compile(statement, f"{job['name']}, cell {number}", "exec"), namespace)
                except Exception as err:
                    errors.append((number, line, f"{type(err).__name__}: {err}"))
    tampered = baseline.changes()
    results = {}
    for label, code in job["checks"].items():
        if tampered:
            results[label] = {"output": "", "error": (
                f"{label}: the notebook changed the library or the checks that grade it ("
                + "; ".join(tampered[:3]) + "); nothing is graded")}
            continue
        results[label] = _run_cell(label, code, {**namespace, "checks": checks},
                                   errors, skipped, baseline)
        tampered = baseline.changes()
    return results


def _run_cell(label, code, namespace, errors, skipped, baseline):
    output = io.StringIO()
    error = None
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            exec(compile(code, label, "exec"), namespace)
        except NameError as err:
            error = f"{label}: {err}{_why_missing(err, errors, skipped)}"
        except CheckFailed as err:
            error = str(err)
        except BaseException as err:  # noqa: B036 - a student's SystemExit fails one check
            error = f"{label}: {type(err).__name__}: {err}\n{traceback.format_exc(limit=-3)}"
    changed = baseline.changes()
    if changed and error is None:
        error = (f"{label}: the graded code changed the library or the checks ("
                 + "; ".join(changed[:3]) + ")")
    return {"output": output.getvalue(), "error": error}


def _why_missing(err, errors, skipped):
    name = getattr(err, "name", None)
    notes = []
    if name in skipped:
        notes.append(f"{name!r} is set by top-level code in cell {skipped[name]}, which the "
                     "autograder does not run: it takes only imports, functions, classes and "
                     "constants from the notebook")
    notes += [f"cell {number} ({line!r}) failed: {what}" for number, line, what in errors]
    return "" if not notes else "\n  (" + "; ".join(notes) + ")"


def main():
    """``python -m minicoat.assignments.grading``: a job on stdin, the results on stdout."""
    job = json.loads(sys.stdin.read())
    nonce = job.pop("nonce")
    results = _serve(job)
    sys.stdout.write("\n" + nonce + json.dumps(results) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
