"""Sphinx configuration of the sklearn-otflow documentation.

Build from the repository root (the README's command; ``.ci/run`` runs it after its torch pin)::

    pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html

``-D plot_gallery=0`` skips running the gallery examples, for a quick look at the text.
"""

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

# the gallery runs two examples at a time (sphinx_gallery_conf["parallel"]), each in a process of its
# own that inherits this: one torch thread per example, so that two of them fill two cores, no more
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sklearn_otflow  # noqa: E402
from sklearn_otflow import theory  # noqa: E402

DOCS = Path(__file__).parent
sys.path.insert(0, str(DOCS))  # so that sphinx-gallery can import conf.GalleryOrder by name

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
exclude_patterns += ["auto_examples/sg_execution_times.rst"]  # left by builds before write_computation_times
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
_SINGLE_PAGES = ("index", "install", "user_guide", "when_to_use", "theory", "benchmarks", "changelog")
html_sidebars = {page: [] for page in _SINGLE_PAGES}
html_sidebars["auto_examples/*"] = []  # the code boxes get the width: the breadcrumbs lead back to the index
html_show_sourcelink = False

# -- math: MathJax 3 served from the site itself, so that equations render with no network -----------------
# sphinx.ext.mathjax writes the <span class="math"> and <div class="math"> elements and loads mathjax_path
# (relative: under _static/) on the pages that have math. The MathJax files come from the PyPI package
# sphinx-mathjax-offline (the docs extra), not used as an extension: it would copy all of its 24 MB. Copied
# are the one combined file loaded, its CHTML fonts and the TeX extensions it loads on demand (\boldsymbol,
# \cancel, ...): about 2 MB. docs/check_html.py checks the built pages for TeX left unrendered.
mathjax_path = "mathjax/tex-chtml.js"
_MATHJAX_FILES = ["tex-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions"]

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
    "within_subsection_order": "conf.GalleryOrder",
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "min_reported_time": 0,
    "show_memory": False,
    "matplotlib_animations": False,
    # no sg_execution_times pages: they load jQuery and DataTables from CDNs, and docs/check_html.py
    # fails on any page that needs the network to display
    "write_computation_times": False,
    # two examples at a time: the build's time is the longest examples', not their sum
    "parallel": 2,
}


GALLERY_ORDER = (  # the practical examples first, the theory last
    "plot_digits.py",
    "plot_pipeline_grid_search.py",
    "plot_conditional_density.py",
    "plot_weighted_fit.py",
    "plot_gaussianization.py",
    "plot_density_2d.py",
    "plot_alpha_path.py",
)


class GalleryOrder:
    """The gallery's order (sphinx-gallery's ``within_subsection_order``): ``GALLERY_ORDER``."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename: str) -> int:
        if filename not in GALLERY_ORDER:
            raise ValueError(f"examples/{filename} is missing from GALLERY_ORDER in docs/conf.py")
        return GALLERY_ORDER.index(filename)


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


def _copy_mathjax(app, exception):
    """Copy the MathJax files that ``mathjax_path`` needs into the built site's ``_static/mathjax/``."""
    if exception is not None or app.builder.format != "html":
        return
    spec = importlib.util.find_spec("sphinx-mathjax-offline")  # the package's folder name has dashes
    if spec is None or spec.origin is None:
        raise RuntimeError("MathJax missing: pip install sphinx-mathjax-offline (in the docs extra)")
    source = Path(spec.origin).parent / "static" / "mathjax"
    target = Path(app.outdir) / "_static" / "mathjax"
    for name in _MATHJAX_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)


def setup(app):
    app.connect("env-check-consistency", _check_every_public_name_is_documented)
    app.connect("autodoc-skip-member", _skip_foreign_members)
    app.connect("build-finished", _copy_mathjax)
