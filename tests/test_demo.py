"""``python -m sklearn_otflow``: the README's demo runs end to end and reports every model."""

import functools

import sklearn_otflow.__main__ as demo


def test_demo_prints_the_table_and_a_verdict_per_dataset(monkeypatch, tmp_path, capsys):
    # a short flow: this checks the demo's plumbing, not the scores it prints with the defaults
    monkeypatch.setattr(demo, "OTFlowDensity", functools.partial(demo.OTFlowDensity, max_iter=20, n_steps=2))
    figure = tmp_path / "digits.png"
    demo.main(["--datasets", "iris", "digits", "--output", str(figure)])
    out = capsys.readouterr().out
    table = out[out.index("held-out mean log-likelihood") :]
    for name in ("KernelDensity", "GaussianMixture", "OTFlowDensity", "iris, 4 features", "digits, 15"):
        assert name in table
    assert table.count("OTFlowDensity is ") == 2  # one verdict per dataset
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in out
    else:
        assert figure.stat().st_size > 10_000
