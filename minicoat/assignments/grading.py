"""Run a submitted notebook's code, then its checks: the runtime of the generated autograder.

The autograder (``OUT/autograder/test_<assignment>.py``, written by ``build``) holds the
notebook's check cells *with* their hidden tests. For each submission it

1. reads the student's notebook (``.ipynb``, or the paired ``.py``: whichever was saved last),
2. runs every code cell except the check cells, in order, in one namespace, as "Run all"
   would, but going on after a cell fails (an unfinished cell raises ``NotImplementedError``
   and must not hide the other parts' grades), and
3. runs each check cell in a copy of that namespace, one pytest test per check cell.

A check that fails because a name is missing (the cell that defines it failed) is reported
with that cell's error, e.g. "not implemented yet: <hint>".
"""

import linecache
import pathlib
import re
import sys

from . import checks

MAGIC = re.compile(r"^(\s*)[%!]")  # IPython magics and shell escapes: skipped


class Submission:
    """One student's notebook, executed; ``run_check`` grades it one check cell at a time."""

    def __init__(self, path, namespace, errors):
        self.path = path
        self.namespace = namespace
        self.errors = errors  # [(cell number, first line, exception)] of the cells that raised

    @classmethod
    def load(cls, folder, name):
        """Execute the notebook ``name`` (without extension) found in ``folder``."""
        path = find_notebook(folder, name)
        namespace = {"__name__": name, "__file__": str(path)}
        errors = []
        sys.path.insert(0, str(path.parent))  # the notebook may import helpers beside it
        try:
            for number, line, source in code_cells(path):
                try:
                    exec(_compile(source, f"{path.name}, cell {number}"), namespace)
                except Exception as err:  # reported with the checks it breaks
                    errors.append((number, line, err))
        finally:
            sys.path.remove(str(path.parent))
        return cls(path, namespace, errors)

    def run_check(self, code, label):
        """Run one check cell's code; raise ``CheckFailed`` with a clear message if it fails."""
        namespace = {"checks": checks, **self.namespace}
        try:
            exec(_compile(code, label), namespace)
        except NameError as err:  # most likely defined by a cell that failed: say which
            raise checks.CheckFailed(f"{label}: {err}{self._cell_errors()}") from err

    def _cell_errors(self):
        if not self.errors:
            return ""
        lines = []
        for number, line, err in self.errors:
            what = (f"not implemented yet: {err}" if isinstance(err, NotImplementedError)
                    else f"{type(err).__name__}: {err}")
            lines.append(f"cell {number} ({line!r}) failed: {what}")
        return f"\n  (in {self.path.name}: " + "; ".join(lines) + ")"


def _compile(source, filename):
    """Compile with the source registered, so that tracebacks show the failing line."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return compile(source, filename, "exec")


def find_notebook(folder, name):
    """``folder/name.ipynb`` or ``folder/name.py``; if both exist, the one saved last."""
    folder = pathlib.Path(folder)
    found = [p for p in (folder / f"{name}.ipynb", folder / f"{name}.py") if p.is_file()]
    if not found:
        raise FileNotFoundError(f"no {name}.ipynb or {name}.py in {folder.resolve()}")
    return max(found, key=lambda p: p.stat().st_mtime)


def code_cells(path):
    """``(cell number, first line, source)`` of each code cell that is not a check cell."""
    import jupytext  # imported here: only the autograder needs it

    notebook = jupytext.read(path)
    for number, cell in enumerate(notebook.cells, start=1):
        if cell.cell_type != "code" or "check" in cell.metadata.get("tags", []):
            continue
        lines = [MAGIC.sub(r"\1pass  # ", line) for line in cell.source.splitlines()]
        first = next((line.strip() for line in lines if line.strip()), "")
        yield number, first[:60], "\n".join(lines) + "\n"
