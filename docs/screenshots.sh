#!/usr/bin/env bash
# Screenshots of the built site as a reader sees it: the landing page, the user guide, "when to use",
# the benchmarks and every gallery page, each as screenshot_<page>.png (screenshot_plot_digits.png for
# auto_examples/plot_digits.html). A page the site does not have is skipped with a message.
#
#     bash docs/screenshots.sh [SITE [OUTPUT]]    # defaults: docs/_build/html and docs/_static
#
# Build the docs first, with the gallery executed for the final screenshots (a plot_gallery=0 build has
# no figures). Needs Debian's chromium (apt-get install -y chromium) and no network: MathJax is in the
# site (docs/conf.py). Each page is loaded twice: once in an iframe of a scratch page that reports the
# page's full height (math typeset and images loaded), then shot at 1280 x that height, capped at
# MAX_HEIGHT (environment, default 12000 pixels).
set -euo pipefail
docs="$(cd "$(dirname "$0")" && pwd)"
site="$(cd "${1:-$docs/_build/html}" && pwd)"
out="${2:-$docs/_static}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
max_height="${MAX_HEIGHT:-12000}"
[[ -f "$site/index.html" ]] || { echo "no built site at $site (build the docs first)" >&2; exit 1; }

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
chrome() {  # chrome ARGS...: headless chromium that reaches nothing outside, its own profile each time
    timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
        --force-device-scale-factor=1 --user-data-dir="$(mktemp -d -p "$scratch")" \
        --virtual-time-budget=10000 "$@" 2>>"$scratch/chromium.log"
}

height() {  # height PAGE: the page's scrollHeight at a width of 1280, after MathJax has typeset it
    cat >"$scratch/measure.html" <<EOF
<!doctype html><html><body style="margin:0">
<iframe id="f" style="width:1280px;height:900px;border:0" src="file://$site/$1"></iframe>
<script>
document.getElementById("f").onload = function () {
  var frame = this;
  setTimeout(function () {  // virtual time: MathJax typesets after the load event
    document.body.setAttribute("data-height", frame.contentDocument.documentElement.scrollHeight);
  }, 3000);
};
</script></body></html>
EOF
    chrome --allow-file-access-from-files --dump-dom "file://$scratch/measure.html" |
        sed -n 's/.*data-height="\([0-9]*\)".*/\1/p'
}

shoot() {  # shoot PAGE: PAGE (relative to the site) into $out/screenshot_<name>.png
    local page="$1" name h
    name="$(basename "$page" .html)"
    if [[ ! -f "$site/$page" ]]; then
        echo "skip $page: not in the site"
        return
    fi
    h="$(height "$page")"
    if [[ -z "$h" ]]; then
        h=4000
        echo "  could not measure $page; shooting at $h pixels" >&2
    elif ((h > max_height)); then
        echo "  $page is $h pixels high; cut at $max_height" >&2
        h="$max_height"
    fi
    rm -f "$out/screenshot_$name.png"
    chrome --window-size="1280,$h" --screenshot="$out/screenshot_$name.png" "file://$site/$page" >/dev/null
    if [[ ! -s "$out/screenshot_$name.png" ]]; then
        echo "chromium wrote no screenshot of $page; its log:" >&2
        tail -20 "$scratch/chromium.log" >&2
        exit 1
    fi
    echo "$out/screenshot_$name.png  ($page, 1280 x $h)"
}

for page in index.html user_guide.html when_to_use.html benchmarks.html; do
    shoot "$page"
done
shopt -s nullglob
gallery=("$site"/auto_examples/plot_*.html)
((${#gallery[@]})) || echo "skip the gallery: no auto_examples/plot_*.html in the site"
for path in "${gallery[@]}"; do
    shoot "auto_examples/$(basename "$path")"
done
