"""Grading the student's own work: tripwires on the library, and tamper detection.

Every call into a student's function goes through ``guarded_call``, which

* traces the Python calls the student's code makes (``sys.setprofile``) and fails the check
  when one reaches the library's implementation of the thing being graded: a public op
  (``mc.depthwise_conv2d``), any of its tiers (``mc.implementation``), ``minicoat.ops.*``,
  ``minicoat.kernels.*``, ``minicoat.blocks``, ``minicoat.optim``, the PyTorch oracle or torch
  itself, and, for a VJP written by hand, autograd's differentiation;
* verifies afterwards that no attribute of minicoat (the checks included), autograd or numpy
  was replaced while the student's code ran (``Baseline``), so that a function cannot rewrite
  the checks that grade it.

The tripwires catch a call however the function was reached (a name imported earlier, the
traced / readable / fast tiers, ``autograd.grad`` of the library's op), because they compare
the code that runs, not names. What they cannot see: library source copied into the
notebook, and code that defeats the profiler by means other than ``sys.setprofile`` /
``sys.settrace`` / threads. docs/teaching.md lists these limits.
"""

import pathlib
import re
import sys
import threading
import types

import autograd

import minicoat

PACKAGE = pathlib.Path(minicoat.__file__).resolve().parent
AUTOGRAD = pathlib.Path(autograd.__file__).resolve().parent
HOOKS = (sys.setprofile, sys.settrace, threading.setprofile, threading.settrace)
AUTODIFF = ("autograd's differentiation (autograd.grad / make_vjp / value_and_grad)",
            AUTOGRAD, re.compile(r"^(make_vjp|make_jvp|trace)$"))


class Forbidden:
    """What a graded function must not call: ``(what, file glob, function name regex)``.

    ``file glob`` is relative to the minicoat package (``"ops/conv.py"``, ``"*/norm.py"``).
    """

    def __init__(self, subject, *rules, autodiff=False):
        self.subject = subject  # e.g. "depthwise_conv2d"
        self.rules = [(what, glob, re.compile(pattern)) for what, glob, pattern in rules]
        self.autodiff = autodiff
        self._verdicts = {}

    def offence(self, code):
        """A description of the forbidden function ``code`` belongs to, or None."""
        try:
            return self._verdicts[code]
        except KeyError:
            pass
        verdict = None
        path = pathlib.Path(code.co_filename)
        if path.is_absolute():
            if _inside(path, PACKAGE) and not _inside(path, PACKAGE / "assignments"):
                relative = path.relative_to(PACKAGE)
                for what, glob, pattern in self.rules:
                    if relative.match(glob) and pattern.search(code.co_name):
                        verdict = f"the library's {what} ({relative}: {code.co_name})"
                        break
            elif "torch" in path.parts and "site-packages" in str(path):
                verdict = f"PyTorch ({code.co_name} in {path.name})"
            elif self.autodiff and _inside(path, AUTODIFF[1]) and AUTODIFF[2].search(code.co_name):
                verdict = AUTODIFF[0]
        self._verdicts[code] = verdict
        return verdict


def _inside(path, folder):
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


class LibraryCall(BaseException):
    """Raised inside the student's code at a forbidden call (a BaseException: an
    ``except Exception`` in the student's code does not hide it; it is recorded anyway)."""


def guarded_call(forbidden, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the tripwires of ``forbidden`` armed and tampering checked.

    Returns ``(result, None)``, or ``(None, message)`` when the student's code called what it
    must not, or changed the library or the checks.
    """
    baseline = Baseline.current()
    offences, armed = [], [True]

    def profile(frame, event, arg):
        if not armed[0]:
            return
        if event == "call":
            found = forbidden.offence(frame.f_code)
            if found:
                offences.append(found)
                raise LibraryCall(found)
        elif event == "c_call" and any(arg is hook for hook in HOOKS):
            offences.append("sys.setprofile / sys.settrace, which the grader's tripwires use")
            raise LibraryCall("the profiler")

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        result = fn(*args, **kwargs)
    except LibraryCall:
        result = None
    finally:
        armed[0] = False
        sys.setprofile(previous)
    changed = baseline.changes() if baseline else []
    if offences:
        return None, (f"this check grades your own implementation of {forbidden.subject}, but "
                      f"your code called {offences[0]}: write it yourself")
    if changed:
        return None, ("your code changed the library or the checks that grade it ("
                      + "; ".join(changed[:3]) + "): graded code must not replace them")
    return result, None


# -- tamper detection -----------------------------------------------------------------------

WATCHED = ("minicoat", "autograd", "numpy", "builtins")


def _watched(name):
    return name in WATCHED or name.startswith(("minicoat.", "autograd."))


def _fingerprint(value):
    """Identity of a module attribute, including what a function runs."""
    parts = [id(value)]
    if isinstance(value, types.FunctionType):
        parts += [id(value.__code__), id(value.__defaults__), id(value.__kwdefaults__)]
        for cell in value.__closure__ or ():
            try:
                parts.append(id(cell.cell_contents))
            except ValueError:  # an empty cell
                parts.append(0)
    entries = None
    if isinstance(value, dict) and len(value) < 500:  # registries such as the tier switch
        entries = {k: id(v) for k, v in value.items()}
    return tuple(parts), entries


def _same(before, now):
    """Whether an attribute kept its identity; a dict may gain entries, not change them."""
    if before[0] != now[0]:
        return False
    if before[1] is None:
        return True
    return now[1] is not None and all(now[1].get(k, object()) == v for k, v in before[1].items())


class Baseline:
    """Fingerprints of every attribute of the watched modules, taken before student code ran."""

    _current = None

    def __init__(self):
        self.modules = {}
        for name, module in list(sys.modules.items()):
            if _watched(name) and isinstance(module, types.ModuleType):
                self.modules[name] = (id(module), {k: _fingerprint(v)
                                                   for k, v in vars(module).items()})

    @classmethod
    def take(cls):
        """Take the baseline that ``guarded_call`` verifies against (the grader calls this
        once, before any student code runs)."""
        cls._current = cls()
        return cls._current

    @classmethod
    def current(cls):
        return cls._current

    def changes(self):
        """``["minicoat.ops.conv.depthwise_conv2d replaced", ...]``: attributes that changed.

        New attributes and modules imported since are fine (imports add them); replaced or
        deleted ones are not.
        """
        found = []
        for name, (module_id, attrs) in self.modules.items():
            module = sys.modules.get(name)
            if module is None or id(module) != module_id:
                found.append(f"module {name} replaced")
                continue
            now = vars(module)
            for key, before in attrs.items():
                if key not in now:
                    found.append(f"{name}.{key} deleted")
                elif not _same(before, _fingerprint(now[key])):
                    found.append(f"{name}.{key} replaced")
        return found
