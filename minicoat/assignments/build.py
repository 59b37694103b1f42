"""Build the course assignments: student notebooks, instructor notebooks and the autograder.

    minicoat assignments build OUT [--solutions] [--force]
    python -m minicoat.assignments build OUT [--solutions] [--force]

writes::

    OUT/student/<name>.ipynb, <name>.py    hand out: solutions replaced by stubs, no hidden tests
    OUT/autograder/                         keep: pytest files running every check, hidden too
    OUT/solutions/<name>.ipynb, <name>.py   with --solutions: markers intact, nbgrader metadata
    OUT/README.md

The sources are jupytext percent files in ``minicoat/assignments/sources/``, marked up the way
nbgrader marks its source notebooks:

* ``### BEGIN SOLUTION`` / ``### END SOLUTION`` around code the student writes. The student
  version replaces the region by ``raise NotImplementedError("<hint>")`` at the marker's
  indentation (inside a function or at the top level of a cell alike), the hint taken from
  the ``# HINT: ...`` lines of the region;
* ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` around checks the student does not see,
  inside check cells (``# %% tags=["check"]``). The student version drops them; the
  autograder runs them.
* markdown cells tagged ``answer`` (``# %% [markdown] tags=["answer"]``) hold the model answer
  to a written question: the student version has "YOUR ANSWER HERE" instead, the instructor
  version marks them as nbgrader manually graded answer cells (``ANSWER_POINTS`` points).

Markers are checked before anything is written: a marker that is unbalanced, nested,
misspelt, in a markdown cell or crossing a cell boundary is a ``ValueError`` naming the file
and the line.
"""

import argparse
import importlib.resources
import json
import pathlib
import re
import shutil
import sys
import textwrap
from dataclasses import dataclass, field

from .templates import AUTOGRADER_MODULE, AUTOGRADER_TEST, CONFTEST, NBGRADER_CONFIG, README

BEGIN = {"solution": "### BEGIN SOLUTION", "hidden": "### BEGIN HIDDEN TESTS"}
END = {"solution": "### END SOLUTION", "hidden": "### END HIDDEN TESTS"}
MARKERS = {**{m: ("begin", k) for k, m in BEGIN.items()}, **{m: ("end", k) for k, m in END.items()}}
PHRASES = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
HINT = "# HINT:"
DEFAULT_HINT = "replace this line with your code"
CHECK_TAG = "check"
ANSWER_TAG = "answer"  # a markdown cell holding the model answer to a written question
ANSWER_STUB = "YOUR ANSWER HERE"  # nbgrader's own text stub
ANSWER_POINTS = 2
FOLDERS = ("student", "autograder", "solutions")
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


# -- markers --------------------------------------------------------------------------------


@dataclass
class _Region:
    kind: str  # "solution" or "hidden"
    line: int  # of the BEGIN marker
    indent: str
    hints: list = field(default_factory=list)


def render(text, filename, student):
    """The text of a source with its markers checked; ``student``: stubs, no hidden tests.

    Raises ``ValueError("<filename>:<line>: ...")`` for a marker out of place.
    """
    out, region, cell = [], None, {"markdown": False, "check": False}
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{filename}:{number}"
        if line.startswith("# %%"):
            if region:
                raise _unclosed(filename, region, f"the cell that starts at line {number}")
            cell = {"markdown": "[markdown]" in line, "check": _tagged_check(line, where)}
        action, kind = _marker(line, where)
        if action == "begin":
            _check_begin(where, kind, region, cell)
            region = _Region(kind, number, line[: len(line) - len(line.lstrip())])
        elif action == "end":
            if region is None or region.kind != kind:
                opened = "" if region is None else (
                    f" (the {region.kind} region of line {region.line} is open)")
                raise ValueError(f"{where}: {END[kind]!r} without a matching {BEGIN[kind]!r}"
                                 + opened)
            if student and kind == "solution":
                out += _stub(region.indent, " ".join(region.hints) or DEFAULT_HINT)
            region = None
        elif region and line.strip().startswith(HINT):
            region.hints.append(line.strip()[len(HINT):].strip())
        if not student or (region is None and action is None):
            out.append(line)
    if region:
        raise _unclosed(filename, region, "the end of the file")
    return "\n".join(out) + "\n"


def _stub(indent, hint):
    """What replaces a solution region: a comment and ``raise NotImplementedError("<hint>")``."""
    call = f"raise NotImplementedError({json.dumps(hint)})"
    if len(indent) + len(call) <= 100:
        return [f"{indent}# YOUR CODE HERE", indent + call]
    parts = textwrap.wrap(hint, 90 - len(indent), drop_whitespace=False, break_on_hyphens=False)
    return ([f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError("]
            + [f"{indent}    {json.dumps(part)}" for part in parts] + [f"{indent})"])


def _marker(line, where):
    """("begin" | "end", "solution" | "hidden") for a marker line, (None, None) otherwise."""
    stripped = line.strip()
    if stripped in MARKERS:
        return MARKERS[stripped]
    if any(phrase in line for phrase in PHRASES):
        raise ValueError(f"{where}: malformed marker {stripped!r}; markers are whole lines: "
                         f"{', '.join(map(repr, MARKERS))}")
    return None, None


def _check_begin(where, kind, region, cell):
    if region:
        raise ValueError(f"{where}: {BEGIN[kind]!r} inside the {region.kind} region opened at "
                         f"line {region.line}; close that first with {END[region.kind]!r}")
    if cell["markdown"]:
        raise ValueError(f"{where}: {BEGIN[kind]!r} in a markdown cell; regions go in code cells")
    if kind == "hidden" and not cell["check"]:
        raise ValueError(f"{where}: hidden tests belong in a check cell, # %% tags=[\"check\"]")
    if kind == "solution" and cell["check"]:
        raise ValueError(f"{where}: a solution region in a check cell")


def _unclosed(filename, region, before):
    return ValueError(f"{filename}:{region.line}: {BEGIN[region.kind]!r} is not closed before "
                      f"{before}; add {END[region.kind]!r}")


def _tagged_check(header, where):
    """Whether a cell header (``# %% tags=["check"]``) tags the cell as a check cell."""
    tags = re.search(r"tags=(\[[^\]]*\])", header)
    try:
        return bool(tags) and CHECK_TAG in json.loads(tags.group(1))
    except json.JSONDecodeError:
        raise ValueError(f"{where}: the cell's tags must be a JSON list of strings") from None


def without_markers(source):
    """A check cell's code for the autograder: hidden tests kept, marker lines dropped."""
    return "\n".join(line for line in source.splitlines() if line.strip() not in MARKERS) + "\n"


# -- notebooks ------------------------------------------------------------------------------


@dataclass
class Assignment:
    """One source: its name (``a1_depthwise_conv``), title and instructor text."""

    name: str
    title: str
    text: str

    @classmethod
    def read(cls, filename, text):
        render(text, filename, student=False)  # validates the markers
        name = pathlib.PurePath(filename).stem
        title = re.search(r"^# # (.+)$", text, re.MULTILINE)
        return cls(name, title.group(1).strip() if title else name, text)

    @property
    def marker(self):
        """The pytest marker of the assignment: its prefix, e.g. ``a1``."""
        return self.name.split("_")[0]

    def notebook(self, student):
        """The student (stubs) or instructor (markers and nbgrader metadata) notebook."""
        import jupytext

        nb = jupytext.reads(render(self.text, self.name, student), fmt="py:percent")
        nb.metadata["kernelspec"] = KERNELSPEC
        nb.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
        names = check_names(nb)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "markdown" and ANSWER_TAG in cell.metadata.get("tags", []):
                if student:  # a written answer: the model answer is the instructor's
                    cell.source = ANSWER_STUB
                else:
                    cell.metadata["nbgrader"] = _nbgrader(f"{self.marker}-answer-{index}", True,
                                                          solution=True, points=ANSWER_POINTS)
            if cell.cell_type != "code":
                continue
            cell.outputs, cell.execution_count = [], None
            if index in names and student:  # the checks themselves are not to be edited
                cell.metadata.update(editable=False, deletable=False)
            elif index in names:
                cell.metadata["nbgrader"] = _nbgrader(f"{self.marker}-{names[index]}", True)
            elif not student and BEGIN["solution"] in cell.source:
                cell.metadata["nbgrader"] = _nbgrader(f"{self.marker}-solution-{index}", False)
        return nb

    def autograder(self):
        """The text of ``test_<name>.py``: one test per check cell, hidden tests included."""
        nb = self.notebook(student=False)
        parts = [AUTOGRADER_MODULE.format(title=self.title, name=self.name, marker=self.marker)]
        for index, test in check_names(nb).items():
            code = without_markers(nb.cells[index].source)
            parts.append(AUTOGRADER_TEST.format(test=test, code=_literal(code),
                                                label=f"{self.name}, {test}"))
        return "".join(parts)


def check_names(nb):
    """Cell index -> a unique test name, for every check cell of a notebook."""
    names, taken = {}, set()
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or CHECK_TAG not in cell.metadata.get("tags", []):
            continue
        call = re.search(r"checks\.check_(\w+)\(", cell.source)
        base = cell.metadata.get("title") or (call.group(1) if call else f"cell_{index}")
        base = "test_" + re.sub(r"\W+", "_", base.lower()).strip("_")
        name, suffix = base, 2
        while name in taken:
            name, suffix = f"{base}_{suffix}", suffix + 1
        names[index] = name
        taken.add(name)
    return names


def _nbgrader(grade_id, grade, solution=None, points=1):
    """nbgrader cell metadata (schema 3): a graded check cell, an editable solution cell, or
    (``grade`` and ``solution``) a manually graded answer cell."""
    solution = (not grade) if solution is None else solution
    meta = {"grade": grade, "grade_id": grade_id, "locked": grade and not solution,
            "schema_version": 3, "solution": solution, "task": False}
    return {**meta, "points": points} if grade else meta


def _literal(code):
    """``code`` as a readable Python string literal."""
    if '"""' in code or "\\" in code:
        return repr(code)
    return '"""\\\n' + code + '"""'


# -- building -------------------------------------------------------------------------------


def default_sources():
    """``[(filename, text)]`` of the assignment sources shipped with minicoat, in order."""
    folder = importlib.resources.files(__package__).joinpath("sources")
    files = sorted((f for f in folder.iterdir() if re.fullmatch(r"a\d+_\w+\.py", f.name)),
                   key=lambda f: f.name)
    return [(f.name, f.read_text(encoding="utf-8")) for f in files]


def build(out, solutions=False, force=False, sources=None):
    """Write the student notebooks, the autograder and, with ``solutions``, the instructor ones.

    Args:
        out: output folder; it must not exist or be empty unless ``force``, which replaces its
            ``student/``, ``autograder/`` and ``solutions/`` folders.
        solutions: also write ``solutions/`` (markers intact, nbgrader metadata).
        sources: paths of assignment sources (default: those shipped with minicoat).

    Returns:
        The paths written. Raises ``ValueError`` (file and line) for a source with misplaced
        markers and ``FileExistsError`` for a non-empty ``out`` without ``force``; in both
        cases before writing anything.
    """
    import jupytext

    out = pathlib.Path(out)
    pairs = default_sources() if sources is None else [
        (str(p), pathlib.Path(p).read_text(encoding="utf-8")) for p in sources]
    assignments = [Assignment.read(filename, text) for filename, text in pairs]
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(
                f"{out} exists and is not empty; choose a new folder, or pass --force to replace "
                f"its {', '.join(f + '/' for f in FOLDERS)} folders")
        for folder in FOLDERS:
            shutil.rmtree(out / folder, ignore_errors=True)
    written = []

    def write(path, text):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)

    versions = [("student", True)] + ([("solutions", False)] if solutions else [])
    for assignment in assignments:
        for folder, student in versions:
            nb = assignment.notebook(student)
            # .ipynb last: the newer of the two is the one graded, and students open the .ipynb
            for suffix, fmt in ((".py", "py:percent"), (".ipynb", "ipynb")):
                write(out / folder / f"{assignment.name}{suffix}", jupytext.writes(nb, fmt=fmt))
        write(out / "autograder" / f"test_{assignment.name}.py", assignment.autograder())
    markers = "".join(f"    {a.marker}: {re.sub(r'[^ -~]', '-', a.title)}\n"
                      for a in assignments)  # ASCII: ini files have no declared encoding
    write(out / "autograder" / "pytest.ini",
          "[pytest]\naddopts = --tb=short\n"
          "# one marker per assignment: `pytest -m a1` grades A1 only\n"
          f"markers =\n{markers}")
    write(out / "autograder" / "conftest.py", CONFTEST)
    write(out / "nbgrader_config.py", NBGRADER_CONFIG)
    write(out / "README.md", README + "".join(
        f"- `{a.marker}`: {a.title} (`{a.name}`)\n" for a in assignments))
    return written


def main(argv=None):
    """``minicoat assignments build OUT [--solutions] [--force]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="minicoat assignments", description="Course assignments built from minicoat.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = commands.add_parser(
        "build", help="write student notebooks and the autograder (docs/teaching.md)",
        description="Write OUT/student (hand out), OUT/autograder (keep) and, with "
                    "--solutions, OUT/solutions (instructor notebooks).")
    command.add_argument("out", metavar="OUT", help="output folder (new or empty)")
    command.add_argument("--solutions", action="store_true",
                         help="also write the instructor notebooks (solutions, hidden tests)")
    command.add_argument("--force", action="store_true",
                         help="replace OUT's student/, autograder/ and solutions/ if present")
    args = parser.parse_args(argv)
    try:
        written = build(args.out, solutions=args.solutions, force=args.force)
    except (ValueError, FileExistsError) as err:
        print(f"minicoat assignments build: error: {err}", file=sys.stderr)
        return 2
    notebooks = sum(p.suffix == ".ipynb" for p in written)
    print(f"wrote {len(written)} files to {args.out}: {notebooks} notebooks, the autograder in "
          f"{pathlib.Path(args.out) / 'autograder'}")
    return 0
