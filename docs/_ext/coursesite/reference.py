"""The API reference: a page per public module of the package, the package's own page as
the index (its ``__all__``, each name linked to the module that defines it).

A module's page shows its docstring, then what it defines and makes public (its ``__all__``,
or every name without a leading ``_``), in source order; names it only re-exports are linked
to where they are defined, so nothing is documented twice. Modules are found by walking the
package: a new or moved module gets its page with nothing to edit here.
"""

import importlib
import inspect
import pkgutil

from . import DOCS, MARK, PACKAGE, fresh_folder, write_if_changed


def public_modules():
    """Every importable module of the package whose dotted name has no ``_`` component."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE] + [m.name for m in pkgutil.walk_packages(package.__path__, PACKAGE + ".")]
    return [n for n in names if not any(part.startswith("_") for part in n.split("."))]


def unwrap_primitives(modules):
    """Let autodoc see the functions behind ``autograd.extend.primitive`` as their own.

    A primitive is a wrapper made in ``autograd.tracer`` that keeps the function it wraps as
    ``.fun`` but not its module or signature: autodoc would take it for an import and skip
    it. Here (in the build's process only) it gets them back.
    """
    for module_name in modules:
        for obj in vars(importlib.import_module(module_name)).values():
            raw = getattr(obj, "fun", None)
            if callable(obj) and callable(raw) and getattr(raw, "__module__", None) == module_name:
                obj.__module__, obj.__qualname__ = raw.__module__, raw.__qualname__
                obj.__wrapped__ = raw  # inspect.signature: the real arguments


def defined_members(module_name):
    """``[(name, obj)]`` that the module defines and makes public, in source order.

    Public: listed in ``__all__`` if the module has one, else not starting with ``_``.
    Only functions and classes are documented (module constants carry no docstrings).
    """
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    members = [(name, obj) for name, obj in vars(module).items()
               if (name in exported if exported is not None else not name.startswith("_"))
               and (inspect.isfunction(obj) or inspect.isclass(obj))
               and obj.__module__ == module_name]
    return sorted(members, key=lambda member: _line(member[1]))


def _line(obj):
    try:
        return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return 0


def reexports(module_name, documented):
    """``[(canonical name or None, name)]`` for the names of ``__all__`` defined elsewhere."""
    module = importlib.import_module(module_name)
    found = []
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if not callable(obj):
            continue  # data: see exported_data
        owner = getattr(obj, "__module__", None)
        if owner != module_name:
            canonical = f"{owner}.{getattr(obj, '__qualname__', name)}"
            found.append((canonical if canonical in documented else None, name))
    return found


def exported_data(module_name):
    """Names in ``__all__`` that are neither functions nor classes (constants, instances)."""
    module = importlib.import_module(module_name)
    return [name for name in getattr(module, "__all__", ())
            if not callable(getattr(module, name))]


def _entries(module_name, members):
    return "\n".join(f".. autoclass:: {module_name}.{name}\n   :members:\n" if inspect.isclass(obj)
                     else f".. autofunction:: {module_name}.{name}\n" for name, obj in members)


def module_page(module_name, title, intro, documented):
    """reST of a module's page: its docstring, its re-exports (linked), its own members."""
    module = importlib.import_module(module_name)
    parts = [f"{title}\n{'=' * len(title)}\n\n.. automodule:: {module_name}\n\n"
             ".. currentmodule:: None\n", intro]  # autosummary: names as given, in full
    exported = reexports(module_name, documented)
    linked = sorted((f"   ~{canonical}" for canonical, _ in exported if canonical),
                    key=lambda line: line.rsplit(".", 1)[-1].lower())
    if linked:
        parts.append(f"Exported by ``{module_name}``, each documented where it is defined:\n\n"
                     ".. autosummary::\n\n" + "\n".join(linked) + "\n")
    # exported from a module that has no page (a private one): documented here
    parts.append(_entries(module_name, [(name, getattr(module, name))
                                        for canonical, name in exported if not canonical]))
    parts.append(_entries(module_name, defined_members(module_name)))
    parts.append("\n".join(f".. autodata:: {module_name}.{name}\n   :no-value:\n"
                            for name in exported_data(module_name)))
    return "\n".join(part for part in parts if part)


REFERENCE_INTRO = """Generated from the docstrings (Google style: arguments, returns,
shapes). Arrays are channels-last, ``(N, H, W, C)``; :doc:`../api` groups the same names by
what they do, with examples. Every public module of the package has a page:

.. autosummary::

{modules}

.. toctree::
   :hidden:

{modules}

``import minicoat as mc``
-------------------------
"""


def write_reference():
    """``docs/reference/``: a page per public module; the package's own page is the index."""
    folder = DOCS / "reference"
    if not (folder / MARK).exists():
        folder = fresh_folder("reference")
    modules = public_modules()
    unwrap_primitives(modules)
    documented = {f"{m}.{name}" for m in modules for name, _ in defined_members(m)}
    listing = "\n".join(f"   {m}" for m in modules if m != PACKAGE)
    for module in modules:
        if module == PACKAGE:
            text = module_page(module, "API reference", REFERENCE_INTRO.format(modules=listing),
                               documented)
        else:
            text = module_page(module, module, "", documented)
        write_if_changed(folder / ("index.rst" if module == PACKAGE else f"{module}.rst"), text)
    for stale in folder.glob("*.rst"):
        if stale.stem not in modules and stale.stem != "index":
            stale.unlink()
    return ["reference/index"]
