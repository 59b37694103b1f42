"""Links written for GitHub, relative to a file's place in the repository, on the site.

A page of ``docs/`` links ``../notebooks/01_depthwise_convolution.ipynb`` and
``../minicoat/conv.py``; a notebook links ``../docs/oracle.md``. On the site such a link goes to
the page made from that file (a tutorial, a doc page), to the API reference of a module of the
package, or (any other file of the repository) to a download of it. A folder that is not a
package, and the assignments' sources (their solutions), stay plain text. A link to a file that
does not exist is left to myst, which warns: ``-W`` fails the build.
"""

import importlib
import os
import re
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms import SphinxTransform

from . import PACKAGE, ROOT


class RepositoryLinks(SphinxTransform):
    """Links written relative to a file's place in the repository -> the site's pages."""

    default_priority = 500

    def apply(self):
        env = self.env
        here = Path(os.path.realpath(Path(env.doc2path(env.docname)).parent))
        for node in list(self.document.findall(self._candidate)):
            if node.get("refdomain") == "doc":  # myst took a file outside docs/ for a page
                real, anchor = self._file_of_docname(node["reftarget"]), node.get("reftargetid")
            else:
                path, _, anchor = node["reftarget"].partition("#")
                if not path or re.match(r"[a-z]+:", path):
                    continue
                real = Path(os.path.normpath(here / path))
            if real is None or not real.exists():
                continue  # myst (or Sphinx) warns about it
            node.replace_self(self._resolve(node, real, anchor or None))

    def _candidate(self, node):
        if isinstance(node, addnodes.download_reference):
            return node.get("reftype") == "myst"
        if not isinstance(node, addnodes.pending_xref) or node.get("reftype") != "myst":
            return False
        if node.get("refdomain") == "doc":
            return node["reftarget"] not in self.env.found_docs
        return node.get("refdomain") is None

    def _file_of_docname(self, docname):
        """The file behind a docname that myst made of a path outside docs/, if it exists."""
        for suffix in self.config.source_suffix:
            candidate = Path(self.env.srcdir) / (docname + suffix)  # docname may be absolute
            if candidate.is_file():
                return candidate
        return None

    def _resolve(self, node, real, anchor):
        env = self.env
        docname = _doc_of(env, real)
        attributes = dict(refdoc=env.docname, refexplicit=node.get("refexplicit", True))
        if docname:
            new = addnodes.pending_xref("", refdomain="doc", reftype="myst", reftarget=docname,
                                        reftargetid=anchor, **attributes)
        elif _module_of(real) in env.coursesite_modules:
            new = addnodes.pending_xref("", refdomain="py", reftype="mod",
                                        reftarget=_module_of(real), **attributes)
        elif real.is_file() and not _is_solution(real):
            here = os.path.realpath(Path(env.doc2path(env.docname)).parent)  # as Sphinx sees it
            new = addnodes.download_reference(
                "", reftype="myst", refdomain=None,
                reftarget=os.path.relpath(real, here), **attributes)
        else:  # a folder that is not a package, or the solutions: the link text, unlinked
            return nodes.inline("", "", *node.children)
        new["classes"] = node.get("classes", [])
        new.extend(node.children)
        return new


def _doc_of(env, real):
    """The docname whose source is ``real`` (or a tutorial's paired ``.ipynb``), else None."""
    sources = getattr(env, "coursesite_sources", None)  # reset at every build (generate)
    if sources is None:
        sources = {}
        for docname in env.found_docs:
            source = Path(os.path.realpath(env.doc2path(docname)))
            sources[source] = docname
            if docname.startswith("tutorials/"):
                sources[source.with_suffix(".ipynb")] = docname
        env.coursesite_sources = sources
    return sources.get(Path(os.path.realpath(real)))


def _module_of(real):
    """``minicoat.conv`` for ``<root>/minicoat/conv.py`` (or a package's folder), else None."""
    try:
        relative = Path(os.path.realpath(real)).relative_to(ROOT)
    except ValueError:
        return None
    if relative.parts[:1] != (PACKAGE,):
        return None
    if real.is_dir():
        return ".".join(relative.parts) if (real / "__init__.py").exists() else None
    if relative.suffix != ".py":
        return None
    parts = relative.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_solution(real):
    sources = Path(importlib.import_module(f"{PACKAGE}.assignments").__file__).parent / "sources"
    real = Path(os.path.realpath(real))
    return real == sources or sources in real.parents
