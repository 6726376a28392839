#!/usr/bin/env bash
# Build a chapter from a percent-format script: tools/nb.sh SRC.py nbs/NAME.ipynb
# Converts with jupytext, executes in place (outputs and plots are committed), then cleans.
set -euo pipefail
src=$1; dst=$2
here=$(cd "$(dirname "$0")/.." && pwd)
PATH="$here/.venv/bin:$PATH"
jupytext --quiet --to ipynb --output "$dst" "$src"
( cd "$(dirname "$dst")" && jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1200 "$(basename "$dst")" )
nbdev_clean --fname "$dst"
