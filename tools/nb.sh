#!/usr/bin/env bash
# Build a chapter from a percent-format script: tools/nb.sh SRC.py nbs/NAME.ipynb
# Converts with jupytext, executes in place (outputs and plots are committed), cleans, and applies
# tools/course.py (the install cell is written there, not in the script).
set -euo pipefail
src=$1; dst=$2
here=$(cd "$(dirname "$0")/.." && pwd)
PATH="$here/.venv/bin:$PATH"
jupytext --quiet --to ipynb --output "$dst" "$src"
( cd "$(dirname "$dst")" && jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1200 "$(basename "$dst")" )
nbdev_clean --fname "$dst"
python "$here/tools/course.py" "$dst"   # the course's shape: install cell, exports shown, badge, GPU metadata
