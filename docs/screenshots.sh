#!/usr/bin/env bash
# Screenshots of the built site as a reader sees it, for docs/_static/: the landing page and the digits
# example. Build the docs first; needs Debian's chromium (apt-get install -y chromium).
set -euo pipefail
cd "$(dirname "$0")"
html="$PWD/_build/html"
shoot() {  # shoot PAGE OUTPUT HEIGHT
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
        --window-size="1280,$3" --screenshot="$PWD/_static/$2" "file://$html/$1"
}
shoot index.html screenshot_index.png 1100
shoot auto_examples/plot_digits.html screenshot_digits_example.png 4200
