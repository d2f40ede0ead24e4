"""docs/check_html.py, the check of the built documentation, on tiny sites written here (no Sphinx)."""

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).parents[1] / "docs" / "check_html.py"
_spec = importlib.util.spec_from_file_location("check_html", _PATH)
check_html = sys.modules["check_html"] = importlib.util.module_from_spec(_spec)  # dataclasses need it there
_spec.loader.exec_module(check_html)

MATHJAX = '<script defer src="_static/mathjax/tex-chtml.js"></script>'


def site(tmp_path, body, head="", **pages):
    """A site of index.html (``head`` and ``body``), the MathJax file and ``pages`` (name: HTML)."""
    (tmp_path / "_static" / "mathjax").mkdir(parents=True)
    (tmp_path / "_static" / "mathjax" / "tex-chtml.js").write_text("")
    (tmp_path / "index.html").write_text(f"<html><head>{head}</head><body>\n{body}\n</body></html>")
    for name, html in pages.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(html)
    return check_html.check(tmp_path)[0]


@pytest.mark.parametrize("tex", [r"\(x\)", r"\[x\]", "$$x$$", r"costs $\alpha + 1$ here"])
def test_raw_tex_in_prose_fails(tmp_path, tex):
    (problem,) = site(tmp_path, f"<p>where {tex}</p>", MATHJAX)
    assert problem.startswith("index.html:2: raw TeX")


def test_tex_in_math_elements_and_code_passes(tmp_path):
    body = (
        r'<p>a <span class="math notranslate nohighlight">\(x\)</span> and <code>"\(" + s</code></p>'
        r'<div class="math notranslate nohighlight">\[\Phi(x)\]</div><pre>re.escape("\[")</pre>'
        r"<script>var s = '\(';</script><p>costs $5 and $6</p>"
    )
    assert site(tmp_path, body, MATHJAX) == []


def test_math_needs_a_local_mathjax(tmp_path):
    body = r'<span class="math">\(x\)</span>'
    cdn = '<script src="https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js"></script>'
    problems = site(tmp_path, body, cdn)
    assert [p.split(": ")[1] for p in problems] == ["math without MathJax", "network"]
    missing = '<script src="_static/mathjax/tex-svg.js"></script>'
    assert [p.split(": ")[1] for p in check_html.check(_rewrite(tmp_path, body, missing))[0]] == [
        "math without MathJax",
        "broken link",
    ]


def _rewrite(root, body, head):
    (root / "index.html").write_text(f"<html><head>{head}</head><body>\n{body}\n</body></html>")
    return root


def test_links(tmp_path):
    body = (
        '<a href="page.html#there">ok</a> <a href="sub/">ok</a> <a href="#here" id="here">ok</a>'
        '<img src="img.png"> <link rel="stylesheet" href="_static/mathjax/tex-chtml.js?v=1">'
    )
    pages = {"page.html": '<h1 id="there">x</h1>', "sub/index.html": "", "img.png": ""}
    assert site(tmp_path, body, **pages) == []


def test_missing_file_and_anchor_fail(tmp_path):
    body = '<a href="gone.html">x</a>\n<a href="page.html#nowhere">y</a>\n<img src="../up.png">'
    problems = site(tmp_path, body, **{"page.html": '<h1 id="there">x</h1>'})
    assert problems == [
        "index.html:2: broken link: <a> gone.html: no such file",
        "index.html:3: broken anchor: <a> page.html#nowhere: no id in page.html",
        "index.html:4: broken link: <img> ../up.png: outside the site",
    ]


def test_external_links_are_ignored_but_not_external_scripts(tmp_path):
    body = (
        '<a href="https://example.org/gone.html#x">a</a> <a href="mailto:a@b.c">b</a>'
        '<img src="data:image/png;base64,AAAA"> <a href="javascript:void(0)">c</a>'
        '<link rel="canonical" href="https://example.org/">'
    )
    assert site(tmp_path, body) == []
    problems = site(tmp_path / "2", "", '<link rel="stylesheet" href="https://cdn.example.org/a.css">')
    assert [p.split(": ")[1] for p in problems] == ["network"]


def test_main_exit_status(tmp_path, capsys):
    site(tmp_path, "<p>clean</p>")
    assert check_html.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("check_html: no problems: 1 pages")
    (tmp_path / "index.html").write_text(r"<p>\(x\)</p>")
    assert check_html.main([str(tmp_path)]) == 1
