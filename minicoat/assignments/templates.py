"""The texts ``build`` writes besides the notebooks: the autograder, its conftest, the nbgrader
configuration and the README."""

AUTOGRADER_MODULE = '''"""Autograder for {title}.

Written by `minicoat assignments build` from the source {name}.py: rebuild rather
than edit. Each test runs one check cell of the notebook, hidden tests included, on the code
of the submitted {name}.ipynb (or .py): its definitions only, in a fresh process that imports
the checks itself (minicoat.assignments.grading). `pytest -m {marker}` runs this assignment only.
"""

import pytest

NOTEBOOK = "{name}"
CHECKS = {{}}  # test name -> the check cell's code, hidden tests included
pytestmark = pytest.mark.{marker}
'''

AUTOGRADER_TEST = '''

CHECKS["{label}"] = {code}


def {test}(notebook):
    notebook.result("{label}", CHECKS["{label}"])
'''

CONFTEST = '''"""pytest set-up of the minicoat autograder (written by `minicoat assignments build`).

    pytest autograder                               grade the notebooks in ../student
    pytest autograder --submission path/to/alice    grade one student's returned notebooks
    pytest autograder -m a2                         one assignment only
"""

import os
import pathlib

# The checks' arrays are tiny: one BLAS / OpenMP thread is fastest, and avoids contention when
# several submissions are graded at once. (Set before NumPy and torch are imported.)
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import pytest  # noqa: E402

from minicoat.assignments.grading import Submission  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def pytest_addoption(parser):
    parser.addoption("--submission", default=str(HERE.parent / "student"),
                     help="folder holding the notebooks to grade (default: ../student)")


@pytest.fixture(scope="module")
def notebook(request):
    """The submitted notebook of the test module's assignment, graded in a fresh process."""
    submission = Submission.load(request.config.getoption("--submission"),
                                 request.module.NOTEBOOK)
    submission.grade(request.module.CHECKS)
    return submission
'''

NBGRADER_CONFIG = '''"""nbgrader_config.py for a course using minicoat's assignments (written by
`minicoat assignments build`; copy it into the course directory, or its last lines into yours).

IsolatedChecks re-grades every autograded cell in a fresh process on the notebook's
definitions, so that nothing the student's kernel did can change a grade (docs/teaching.md).
"""

from minicoat.assignments.nbgrader_checks import configure

c = get_config()  # noqa: F821 - provided by nbgrader when it reads this file
configure(c)
'''

README = """# minicoat assignments

Built by `minicoat assignments build` (docs/teaching.md in the minicoat repository).

- `student/`: hand this folder out. One notebook per assignment (`.ipynb`, with its jupytext
  `.py` twin); students complete the cells that raise `NotImplementedError` and run the checks
  in the notebook.
- `autograder/`: keep this folder. `pytest autograder --submission path/to/returned/folder`
  grades a student's notebooks with every check, hidden tests included; `-m a1` grades one
  assignment.
- `solutions/` (with `--solutions`): the instructor notebooks, solutions and hidden tests
  marked nbgrader's way, with nbgrader cell metadata: a source for `nbgrader generate_assignment`.
- `nbgrader_config.py`: for a course graded with `nbgrader autograde`, the configuration that
  re-grades the autograded cells out of the student's kernel.

Assignments:
"""
