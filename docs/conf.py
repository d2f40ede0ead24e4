"""Sphinx configuration of the sklearn-otflow documentation.

Build from the repository root (the same command as in the README and ``.ci/run``)::

    pip install torch==2.13.0 && pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html

``-D plot_gallery=0`` skips running the gallery examples, for a quick look at the text.
"""

import re
from pathlib import Path

import sklearn_otflow
from sklearn_otflow import theory

DOCS = Path(__file__).parent

project = "sklearn-otflow"
author = "the sklearn-otflow developers"
copyright = "the sklearn-otflow developers"
release = sklearn_otflow.__version__
version = re.sub(r"\.dev\d*$", "", release)

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_intersphinx", "_templates", "sg_execution_times.rst"]
templates_path = ["_templates"]
default_role = "literal"

# -- HTML: the pydata theme, scikit-learn's own -----------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"sklearn-otflow {version}"
html_static_path = ["_static"]
html_theme_options = {
    "navbar_align": "left",
    "header_links_before_dropdown": 7,
    "show_prev_next": False,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
# no left sidebar on single pages: it would only say "Section Navigation" over nothing
html_sidebars = {page: [] for page in ("index", "install", "user_guide", "theory", "benchmarks", "changelog")}
html_show_sourcelink = False

# -- API reference: autosummary pages in numpydoc style ---------------------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_member_order = "bysource"  # fit, score_samples, score, sample, ...: the order of the source
numpydoc_show_class_members = False

# -- intersphinx: inventories committed under _intersphinx/, so that the build needs no network -----------
# Each project is looked up in the local file first; the published inventory is only fetched when the
# local file is missing. docs/_intersphinx/README.md says where the local files come from.
_INVENTORIES = {
    "numpy": "https://numpy.org/doc/stable/",
    "sklearn": "https://scikit-learn.org/stable/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "skorch": "https://skorch.readthedocs.io/en/stable/",
}
intersphinx_mapping = {
    name: (url, (str(DOCS / "_intersphinx" / f"{name}.inv"), None)) for name, url in _INVENTORIES.items()
}
intersphinx_timeout = 10

# -- the gallery: examples/plot_*.py, executed at every build ---------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "doc_module": ("sklearn_otflow",),
    "reference_url": {"sklearn_otflow": None},
    "backreferences_dir": "gen_modules/backreferences",
    "within_subsection_order": "FileNameSortKey",
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "min_reported_time": 0,
    "show_memory": False,
    "matplotlib_animations": False,
}


def _check_every_public_name_is_documented(app, env):
    """Warn (an error under ``-W``) when a public name has no entry in the API reference."""
    from sphinx.util import logging

    documented = set(env.get_domain("py").objects)
    names = [f"sklearn_otflow.{name}" for name in sklearn_otflow.__all__]
    names += [f"sklearn_otflow.theory.{name}" for name in theory.__all__]
    for name in names:
        if name not in documented:
            logging.getLogger(__name__).warning("the API reference (docs/api.rst) does not document %s", name)


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Skip a class's callable member that the package does not define (scikit-learn's, torch's, tuple's)."""
    ours = (getattr(obj, "__module__", None) or "").startswith("sklearn_otflow")
    return True if what == "class" and callable(obj) and not ours else None


def setup(app):
    app.connect("env-check-consistency", _check_every_public_name_is_documented)
    app.connect("autodoc-skip-member", _skip_foreign_members)
