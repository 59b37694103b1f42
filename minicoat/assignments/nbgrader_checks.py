"""``nbgrader autograde`` with the checks out of the student's reach.

Under nbgrader the autograded cells run in the student's kernel, after the student's own
cells: a cell that replaces ``checks.check_*``, patches minicoat or installs an IPython input
transformer could make them pass. ``IsolatedChecks`` is an nbgrader autograde preprocessor
that runs after ``Execute`` and re-grades every autograded cell the way the project's
autograder does (``minicoat.assignments.grading``): the notebook's definitions only, in a
fresh process that imports the checks itself, with the tripwires armed. It then replaces each
autograded cell's outputs by that result, an error output for a failure, so the grade
nbgrader records (``SaveAutoGrades``) is the isolated one, whatever the kernel printed.

Enable it in the course's ``nbgrader_config.py`` (``minicoat assignments build`` writes one
to ``OUT/nbgrader_config.py``)::

    from minicoat.assignments.nbgrader_checks import configure
    configure(get_config())
"""

import nbformat
from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

from .build import without_markers
from .grading import code_cells, is_check_cell, run_isolated


class IsolatedChecks(Preprocessor):
    """Re-grade the autograded cells of a notebook in a fresh process (see the module)."""

    enabled = Bool(True, help="nbconvert runs only enabled preprocessors").tag(config=True)

    def preprocess(self, nb, resources):
        graded = {}
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and is_check_cell(cell):
                label = cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {index + 1}"
                graded[index] = label
        if not graded:
            return nb, resources
        name = resources.get("unique_key") or "notebook"
        checks = {label: without_markers(nb.cells[i].source) for i, label in graded.items()}
        results = run_isolated({"name": name, "cells": list(code_cells(nb)), "checks": checks})
        for index, label in graded.items():
            result = results[label]
            outputs = []
            if result["output"]:
                outputs.append(nbformat.v4.new_output("stream", name="stdout",
                                                      text=result["output"]))
            if result["error"] is not None:
                outputs.append(nbformat.v4.new_output(
                    "error", ename="CheckFailed", evalue=result["error"],
                    traceback=["CheckFailed (graded in a fresh process by minicoat): "
                               + result["error"]]))
            nb.cells[index].outputs = outputs
        return nb, resources


def configure(c):
    """Insert ``IsolatedChecks`` right after ``Execute`` in nbgrader's autograde pipeline."""
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import Execute

    steps = c.Autograde.get("autograde_preprocessors")
    if not isinstance(steps, list):  # not configured yet: nbgrader's default pipeline
        steps = Autograde.class_traits()["autograde_preprocessors"].make_dynamic_default()
    steps = list(steps)
    if IsolatedChecks not in steps:
        steps.insert(steps.index(Execute) + 1, IsolatedChecks)
    c.Autograde.autograde_preprocessors = steps
    return c
