"""Check the built HTML documentation for what a reader would see broken, with no network.

    python docs/check_html.py docs/_build/html

Fails (exit status 1, one line per problem: ``page:line: kind: message``) on

* raw TeX in the text a reader sees: ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``$$`` or ``$...\\alpha...$``
  outside the elements that MathJax typesets (Sphinx's ``span.math`` and ``div.math``) and outside
  ``<script>``, ``<style>``, ``<pre>``, ``<code>`` and the like;
* a page with math that does not load MathJax from a file of the site (a CDN needs the network);
* a relative ``href``/``src`` of an ``<a>``, ``<img>``, ``<link>`` or ``<script>`` whose file is not in
  the site, or whose ``#fragment`` is no ``id`` (or ``name``) of the target page;
* a ``<script>`` or stylesheet ``<link>`` loaded over http(s): the site must display with no network.

Links to other sites (http:, https:, mailto:, ...) are not followed. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: classes of the elements MathJax typesets (Sphinx writes ``class="math notranslate nohighlight"``)
MATH_CLASSES = frozenset({"math", "tex2jax_process", "mathjax_process"})
#: elements whose text is code, not prose (and MathJax's own skipHtmlTags)
LITERAL_TAGS = frozenset({"script", "style", "pre", "code", "kbd", "samp", "tt", "textarea", "noscript"})
VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)
#: (tag, attribute) pairs whose URL must resolve in the site
LINK_ATTRS = {"a": ("href",), "img": ("src", "srcset"), "link": ("href",), "script": ("src",)}
#: rel values of a <link> the page needs to display
NEEDED_RELS = frozenset({"stylesheet", "preload", "modulepreload"})
RAW_TEX = re.compile(r"\\[()\[\]]|\$\$|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$")
MATHJAX_SCRIPT = re.compile(r"mathjax|(^|/)(tex|mml)-(mml-)?(chtml|svg)(-full)?\.js$", re.IGNORECASE)
#: folders of files that are no pages (the pydata theme leaves a Jinja template in _static/)
ASSET_DIRS = frozenset({"_static", "_sources", "_images", "_downloads", ".doctrees"})
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass
class Link:
    line: int
    tag: str
    url: str


@dataclass
class Page:
    """What one HTML file holds that the checks need."""

    ids: set[str] = field(default_factory=set)
    links: list[Link] = field(default_factory=list)
    raw_tex: list[tuple[int, str]] = field(default_factory=list)
    math_line: int = 0  # the line of the first math element, 0 when the page has none
    mathjax: list[Link] = field(default_factory=list)
    network: list[Link] = field(default_factory=list)  # scripts and stylesheets loaded over http(s)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._stack: list[tuple[str, bool]] = []  # (tag, whether it starts a region not to check)
        self._skip = 0  # open elements among those whose text is not prose

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs)
        if tag not in VOID_TAGS:
            classes = set((dict(attrs).get("class") or "").split())
            skip = tag in LITERAL_TAGS or bool(classes & MATH_CLASSES)
            if classes & MATH_CLASSES and not self.page.math_line:
                self.page.math_line = self.getpos()[0]
            self._stack.append((tag, skip))
            self._skip += skip

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if not any(open_tag == tag for open_tag, _ in self._stack):
            return  # a stray end tag: ignored, as a browser does
        while self._stack:
            open_tag, skip = self._stack.pop()
            self._skip -= skip
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self._skip and ("\\" in data or "$" in data):
            match = RAW_TEX.search(data)  # one problem for a run of text, at its first TeX
            if match:
                line = self.getpos()[0] + data.count("\n", 0, match.start())
                snippet = " ".join(data[max(0, match.start() - 30) : match.end() + 30].split())
                self.page.raw_tex.append((line, snippet))

    def _element(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("id", "name") if tag in ("a", "map", "iframe") else ("id",):
            if values.get(name):
                self.page.ids.add(values[name])
        line = self.getpos()[0]
        for attr in LINK_ATTRS.get(tag, ()):
            value = (values.get(attr) or "").strip()
            if not value:
                continue
            urls = (
                [value]
                if attr != "srcset"
                else [part.split()[0] for part in value.split(",") if part.strip()]
            )
            for url in urls:
                self.page.links.append(Link(line, tag, url))
                external = url.lower().startswith(("http:", "https:", "//"))  # over the network
                rels = set((values.get("rel") or "").lower().split())
                if external and (tag == "script" or (tag == "link" and rels & NEEDED_RELS)):
                    self.page.network.append(Link(line, tag, url))
                if tag == "script" and MATHJAX_SCRIPT.search(urlsplit(url).path):
                    self.page.mathjax.append(Link(line, tag, url))


def parse(path: Path) -> Page:
    parser = _Parser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return parser.page


def _external(url: str) -> bool:
    """Whether ``url`` leaves the site: another host (http:, //host/), mailto:, data:, javascript:, ..."""
    return bool(SCHEME.match(url)) or url.startswith("//")


def _resolve(root: Path, page: Path, url: str) -> tuple[Path | None, str, str]:
    """The file a relative URL of ``page`` names, its fragment, and why it names none ('' when it does)."""
    parts = urlsplit(url)
    fragment = unquote(parts.fragment)
    if not parts.path:
        return page, fragment, ""
    if parts.path.startswith("/"):
        return None, fragment, "an absolute path, which breaks wherever the site is not at the server's root"
    target = (page.parent / unquote(parts.path)).resolve()
    if not target.is_relative_to(root):
        return None, fragment, "outside the site"
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return None, fragment, "no such file"
    return target, fragment, ""


def check(root: Path) -> tuple[list[str], dict[str, int]]:
    """Check every ``*.html`` under ``root``; the problems, one line each, and counts for the summary."""
    root = root.resolve()
    pages = {path: parse(path) for path in sorted(root.rglob("*.html")) if not ASSET_DIRS & set(path.parts)}
    problems = []
    counts = {"pages": len(pages), "links": 0, "math pages": 0}
    for path, page in pages.items():
        where = path.relative_to(root).as_posix()
        for line, snippet in page.raw_tex:
            problems.append(f"{where}:{line}: raw TeX: in text that MathJax does not typeset: {snippet!r}")
        if page.math_line:
            counts["math pages"] += 1
            if not any(
                not _external(link.url) and _resolve(root, path, link.url)[0] for link in page.mathjax
            ):
                found = ", ".join(link.url for link in page.mathjax) or "none"
                problems.append(
                    f"{where}:{page.math_line}: math without MathJax: the page has math but loads no MathJax "
                    f"from a file of the site (MathJax scripts: {found})"
                )
        for link in page.network:
            problems.append(f"{where}:{link.line}: network: <{link.tag}> loads {link.url}: needs the network")
        for link in page.links:
            if _external(link.url):
                continue  # another site, mailto:, data:, javascript:: not followed
            counts["links"] += 1
            target, fragment, why = _resolve(root, path, link.url)
            if target is None:
                problems.append(f"{where}:{link.line}: broken link: <{link.tag}> {link.url}: {why}")
            elif fragment and fragment != "top" and target.suffix == ".html":  # "#top": the page's top
                if fragment not in (pages[target] if target in pages else parse(target)).ids:
                    name = target.relative_to(root).as_posix()
                    problems.append(
                        f"{where}:{link.line}: broken anchor: <{link.tag}> {link.url}: no id in {name}"
                    )
    return problems, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path, help="the built site, e.g. docs/_build/html")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").is_file():
        parser.error(f"{args.html} has no index.html: build the docs first")
    start = time.perf_counter()
    problems, counts = check(args.html)
    seconds = time.perf_counter() - start
    summary = (
        f"{counts['pages']} pages, {counts['links']} links within the site, "
        f"{counts['math pages']} pages with math, in {seconds:.1f} s"
    )
    if problems:
        print("\n".join(problems))
        print(f"check_html: {len(problems)} problems ({summary})", file=sys.stderr)
        return 1
    print(f"check_html: no problems: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
