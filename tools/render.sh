#!/usr/bin/env bash
# Renders every .svg and .html under the given directories (default: out/) to PNG with
# headless Chromium, so the examples' pictures can be checked as a person sees them:
#   bash tools/render.sh out/seq2seq out/char_rnn      -> out/seq2seq/attention_0.svg.png ...
# Needs Debian's chromium (apt-get install -y chromium). WIDTH / HEIGHT set the window.
set -euo pipefail
WIDTH=${WIDTH:-1000}
HEIGHT=${HEIGHT:-800}
CHROME=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROME" ]; then
  echo "render.sh: chromium not found (apt-get install -y chromium)" >&2
  exit 2
fi
[ $# -eq 0 ] && set -- out
count=0
while IFS= read -r -d '' f; do
  abs=$(realpath "$f")
  # A private profile per run: Chromium refuses to share one between instances.
  profile=$(mktemp -d)
  "$CHROME" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
    --window-size="$WIDTH,$HEIGHT" --screenshot="$abs.png" "file://$abs" >/dev/null 2>&1 || {
    echo "render.sh: chromium failed on $f" >&2; rm -rf "$profile"; exit 1; }
  rm -rf "$profile"
  [ -s "$abs.png" ] || { echo "render.sh: no PNG for $f" >&2; exit 1; }
  echo "rendered $f.png"
  count=$((count + 1))
done < <(find "$@" -type f \( -name '*.svg' -o -name '*.html' \) -print0 | sort -z)
echo "render.sh: $count file(s) rendered"
