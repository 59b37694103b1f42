"""Sphinx configuration of the minicoat course site.

    pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html

builds the site offline, warnings as errors. Besides the pages of ``docs/`` it renders the
tutorials (``notebooks/*.py``, executed at build time in their quick configuration), the
course assignments as students get them (``minicoat.assignments.build``) and an API reference
generated from the docstrings; ``_ext/coursesite/`` generates those pages, the navigation
and the links between them (read it before adding a kind of page).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

import minicoat  # noqa: E402

project = "minicoat"
author = "the minicoat authors"
copyright = "the minicoat authors, MIT licence"
release = version = minicoat.__version__

extensions = [
    "myst_nb",  # Markdown (MyST) pages and notebooks, executed at build time
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # Google-style docstrings
    "sphinx.ext.viewcode",  # highlighted source pages, linked from the API reference
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax served from the site itself: no network
    "sphinx_copybutton",
    "coursesite",  # _ext/coursesite/: tutorials, assignments, API pages, navigation, links
]

# Sources: the top-level pages of docs/ and what _ext/coursesite/ generates. The tutorials
# are read from their jupytext sources (the paired .ipynb is the same notebook, stripped);
# docs/layout_study/ holds the study's output files, shown by layout_study.md.
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
exclude_patterns = [
    "_build", "_ext", "conf.py", "layout_study", "**/.ipynb_checkpoints",
    "tutorials/*.ipynb", "tutorials/_*",
]

# MyST: ```math fences (GitHub's syntax) are equations, $...$ in notebooks too; headings get
# GitHub's anchors, so that links like training.md#datasets work on GitHub and on the site.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_fence_as_directive = ["math"]
myst_heading_anchors = 4

# Notebooks: executed at every build (quick configuration unless MINICOAT_FULL=1 is set), an
# error in a cell fails the build; the assignments are shown as handed out, not run.
nb_execution_mode = "force"
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_excludepatterns = ["assignments/*"]
nb_merge_streams = True

# The API reference: _ext/coursesite/reference.py writes its pages (minicoat.__all__, modules).
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

html_theme = "sphinx_book_theme"
html_title = "minicoat"
html_static_path = []
html_last_updated_fmt = None
html_context = {"default_mode": "auto"}  # light or dark as the reader's system says
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
}
copybutton_exclude = ".linenos, .gp, .go"  # copy code, not prompts or outputs
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

# Warnings are errors (-W); nothing here is fetched from the network.
suppress_warnings = []
