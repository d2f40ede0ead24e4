"""Every public docstring has an Examples section with a doctest (``pytest --doctest-modules`` runs it)."""

import inspect

import pytest

import sklearn_otflow
from sklearn_otflow import theory


def _public_objects():
    """(qualified name, object) for each public name and each documented public method of its classes."""
    for module in (sklearn_otflow, theory):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue
            yield f"{module.__name__}.{name}", obj
            if inspect.isclass(obj):  # its methods, and those of the package's classes it derives from
                ours = [cls for cls in inspect.getmro(obj) if cls.__module__.startswith("sklearn_otflow")]
                for attr, member in {k: v for cls in reversed(ours) for k, v in vars(cls).items()}.items():
                    if not attr.startswith("_") and inspect.isfunction(member) and member.__doc__:
                        yield f"{module.__name__}.{name}.{attr}", member


PUBLIC = dict(_public_objects())


@pytest.mark.parametrize("name", list(PUBLIC))
def test_public_docstring_has_an_examples_doctest(name):
    examples = (inspect.getdoc(PUBLIC[name]) or "").partition("Examples\n--------\n")[2]
    assert ">>> " in examples, f"{name}: expected an 'Examples' section with a doctest, found none"
