#!/usr/bin/env bash
# Refresh web/static/ from the npm registry: the JavaScript the built site would otherwise load
# from public CDNs (RequireJS, the ipywidgets HTML manager, MathJax 3), so that the book works
# offline and the browser test (`make browser`) can run with the network cut off.
# Versions: html-manager 1.0.15 is the release paired with ipywidgets 8.1.9 / jupyterlab_widgets
# 3.0.17 (both depend on @jupyter-widgets/controls ^5.0.13); requirejs 2.3.7 fixes CVE-2024-38999.
set -euo pipefail
cd "$(dirname "$0")"
REQUIREJS=2.3.7
HTML_MANAGER=1.0.15
MATHJAX=3.2.2

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npm install --prefix "$tmp" --no-audit --no-fund --ignore-scripts --silent \
    "requirejs@$REQUIREJS" "@jupyter-widgets/html-manager@$HTML_MANAGER" "mathjax@$MATHJAX"
nm=$tmp/node_modules

# only the vendored folders: static/widgets-setup.js and static/book.css are ours
rm -rf static/requirejs static/jupyter-widgets static/mathjax
mkdir -p static/requirejs static/jupyter-widgets static/mathjax

# RequireJS (MIT): the npm package has no LICENSE file; LICENSE.requirejs is the MIT text of the
# project's repository, to which the header of require.js points
cp "$nm/requirejs/require.js" static/requirejs/
cp LICENSE.requirejs static/requirejs/LICENSE

# HTML manager (BSD-3-Clause, Project Jupyter; no LICENSE in the npm tarball: it is ipywidgets')
# embed-amd.js bundles base, controls and output; the FontAwesome fonts it references are kept
# in the two formats every current browser reads (woff2, woff).
hm=$nm/@jupyter-widgets/html-manager/dist
cp "$hm/embed-amd.js" static/jupyter-widgets/
cp "$hm"/*.woff2 "$hm"/*.woff static/jupyter-widgets/
cp "$hm/embed.js.LICENSE.txt" static/jupyter-widgets/THIRD-PARTY-LICENSES.txt
cp LICENSE.ipywidgets static/jupyter-widgets/LICENSE
# the fonts are Font Awesome Free's (fonts: SIL OFL 1.1, CSS: MIT)
cp "$nm/@fortawesome/fontawesome-free/LICENSE.txt" static/jupyter-widgets/LICENSE-font-awesome.txt

# MathJax 3 (Apache-2.0): the combined TeX/MathML -> CommonHTML component, its fonts and the TeX
# extensions that it autoloads on first use of a macro (all-packages.js is never autoloaded)
mj=$nm/mathjax/es5
cp "$nm/mathjax/LICENSE" static/mathjax/
cp "$mj/tex-mml-chtml.js" static/mathjax/
mkdir -p static/mathjax/output/chtml/fonts static/mathjax/input/tex
cp -r "$mj/output/chtml/fonts/woff-v2" static/mathjax/output/chtml/fonts/
cp -r "$mj/input/tex/extensions" static/mathjax/input/tex/
rm static/mathjax/input/tex/extensions/all-packages.js

(cd static && find requirejs jupyter-widgets mathjax -type f | LC_ALL=C sort | xargs sha256sum) \
    > SHA256SUMS
du -sh static/*
du -sh static
