"""Write the intersphinx inventories that ``docs/conf.py`` reads, so that the docs build needs no network.

Each ``<project>.inv`` is a Sphinx inventory (format version 2) listing the external names our pages and
docstrings refer to, with their addresses on the project's published documentation. The lists below are
kept by hand: add a name here when the docs start to mention it, then run

    python docs/_intersphinx/make_inventories.py

Where the published inventories can be downloaded, they can replace these files (same names, see
README.md); conf.py reads whichever file is here.
"""

import zlib
from pathlib import Path

HERE = Path(__file__).parent

# project: (name in the header, version in the header, {role: [(name, address relative to the docs root)]});
# an entry may end with its display text (labels), else the name is shown.
# "{0}" in an address stands for the name.
SKLEARN = "modules/generated/{0}.html#{0}"
NUMPY = "reference/generated/{0}.html#{0}"
TORCH = "generated/{0}.html#{0}"

PROJECTS = {
    "numpy": (
        "NumPy",
        "stable",
        {
            "py:class": [
                ("numpy.ndarray", NUMPY),
                ("numpy.random.RandomState", "reference/random/legacy.html#{0}"),
                ("numpy.random.Generator", "reference/random/generator.html#{0}"),
            ],
            "py:function": [
                ("numpy.random.default_rng", "reference/random/generator.html#{0}"),
                ("numpy.exp", NUMPY),
                ("numpy.linspace", NUMPY),
                ("numpy.logspace", NUMPY),
                ("numpy.meshgrid", NUMPY),
            ],
        },
    ),
    "sklearn": (
        "scikit-learn",
        "stable",
        {
            "py:class": [
                ("sklearn.base.BaseEstimator", SKLEARN),
                ("sklearn.base.DensityMixin", SKLEARN),
                ("sklearn.base.TransformerMixin", SKLEARN),
                ("sklearn.decomposition.PCA", SKLEARN),
                ("sklearn.linear_model.LogisticRegression", SKLEARN),
                ("sklearn.mixture.GaussianMixture", SKLEARN),
                ("sklearn.model_selection.GridSearchCV", SKLEARN),
                ("sklearn.model_selection.KFold", SKLEARN),
                ("sklearn.neighbors.KernelDensity", SKLEARN),
                ("sklearn.pipeline.Pipeline", SKLEARN),
                ("sklearn.preprocessing.QuantileTransformer", SKLEARN),
                ("sklearn.preprocessing.StandardScaler", SKLEARN),
                ("sklearn.utils.Bunch", SKLEARN),
            ],
            "py:function": [
                ("sklearn.base.clone", SKLEARN),
                ("sklearn.datasets.load_digits", SKLEARN),
                ("sklearn.datasets.load_wine", SKLEARN),
                ("sklearn.datasets.make_moons", SKLEARN),
                ("sklearn.model_selection.cross_val_score", SKLEARN),
                ("sklearn.model_selection.train_test_split", SKLEARN),
                ("sklearn.pipeline.make_pipeline", SKLEARN),
                ("sklearn.utils.check_random_state", SKLEARN),
            ],
            # referred to by the set_partial_fit_request method that scikit-learn's metadata routing
            # generates (partial_fit takes mean= and scale=)
            "std:term": [("meta-estimator", "glossary.html#term-meta-estimator")],
            "std:label": [("metadata_routing", "metadata_routing.html#metadata-routing", "Metadata Routing")],
        },
    ),
    "torch": (
        "PyTorch",
        "stable",
        {
            "py:class": [
                ("torch.Tensor", "tensors.html#{0}"),
                ("torch.dtype", "tensor_attributes.html#{0}"),
                ("torch.device", "tensor_attributes.html#{0}"),
                ("torch.nn.Module", TORCH),
                ("torch.optim.Adam", TORCH),
                ("torch.no_grad", TORCH),
            ],
            "py:function": [
                ("torch.set_num_threads", TORCH),
                ("torch.get_num_threads", TORCH),
                ("torch.as_tensor", TORCH),
                ("torch.from_numpy", TORCH),
            ],
        },
    ),
    "skorch": (
        "skorch",
        "stable",
        {
            "py:class": [
                ("skorch.net.NeuralNet", "net.html#{0}"),
                ("skorch.history.History", "history.html#{0}"),
                ("skorch.callbacks.Callback", "callbacks.html#{0}"),
                ("skorch.callbacks.EarlyStopping", "callbacks.html#{0}"),
                ("skorch.callbacks.EpochScoring", "callbacks.html#{0}"),
                ("skorch.callbacks.LRScheduler", "callbacks.html#{0}"),
                ("skorch.callbacks.ProgressBar", "callbacks.html#{0}"),
                ("skorch.dataset.ValidSplit", "dataset.html#{0}"),
            ],
        },
    ),
}


def inventory(project: str, version: str, entries: dict[str, list[tuple[str, str]]]) -> bytes:
    """The bytes of one inventory: a four-line header, then ``name role priority address label`` lines,
    zlib-compressed (the label ``-`` means the name itself)."""
    lines = [
        f"{name} {role} 1 {address.format(name)} {label[0] if label else '-'}\n"
        for role, names in sorted(entries.items())
        for name, address, *label in sorted(names)
    ]
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    return header.encode() + zlib.compress("".join(lines).encode(), 9)


def main() -> None:
    for name, (project, version, entries) in PROJECTS.items():
        path = HERE / f"{name}.inv"
        path.write_bytes(inventory(project, version, entries))
        print(f"{path}: {sum(map(len, entries.values()))} names")


if __name__ == "__main__":
    main()
