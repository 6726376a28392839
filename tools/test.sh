#!/usr/bin/env bash
# Every check the project runs, in CI's order: the README's test command ends here.
#   nbdev_export + a diff check (the package is what the notebooks export), an nbdev_clean check,
#   tools/course.py --check (every chapter in the course's shape, its install cell covering its
#   imports), every chapter run by nbdev_test in a fresh venv that holds only what the chapters'
#   Colab install cells install (slow, cuda and notest cells skipped), nbdev_proc_nbs (docs
#   processing, offline) + tools/docs_check.py (the pages show the code, hide what is hidden), and
#   pytest over tests/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"
export MPLBACKEND=Agg PYTHONWARNINGS="ignore::DeprecationWarning"
in_git() { git rev-parse --is-inside-work-tree >/dev/null 2>&1; }
step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "nbdev_export: the package must equal what the notebooks export"
nbdev_export
if in_git && [ -n "$(git status --porcelain -- positional_embeddings_pytorch)" ]; then
  git status --short -- positional_embeddings_pytorch; git --no-pager diff --stat -- positional_embeddings_pytorch
  echo "FAILED: the package differs from the notebooks. Edit nbs/, run nbdev_export, commit both."; exit 1
fi

step "nbdev_clean: notebooks must be committed clean"
nbdev_clean
if in_git && [ -n "$(git status --porcelain -- nbs)" ]; then
  git status --short -- nbs
  echo "FAILED: nbdev_clean changed notebooks. Run nbdev_clean and commit."; exit 1
fi

step "course.py --check: every chapter in the course's shape"
python tools/course.py --check

step "nbdev_test in the course venv: every chapter runs with only what its Colab install cell installs"
# A fresh venv (.course_venv/) with torch==2.13.0 and, for each group of chapters, exactly the
# packages their install cells pass to pip (the package from this checkout instead of the URL);
# the chapters run there and nowhere else, so each runs once. One fresh process per notebook, two
# at a time: torch.compile caches guards on `__main__`, which each notebook's shell replaces, so
# notebooks that share a worker process can trip over each other.
python tools/course.py venv-test

step "nbdev_proc_nbs: docs processing works offline"
# nbdev tries to download Quarto when it is missing; the site is rendered by the GitHub Actions
# workflow, so here a stand-in `quarto` on PATH keeps nbdev from fetching anything.
if ! command -v quarto >/dev/null 2>&1; then
  stub=$(mktemp -d); printf '#!/bin/sh\necho "quarto is not installed here; the docs workflow renders the site" >&2; exit 1\n' > "$stub/quarto"
  chmod +x "$stub/quarto"; PATH="$stub:$PATH" nbdev_proc_nbs; rm -r "$stub"
else
  nbdev_proc_nbs
fi

step "docs_check: the pages show every exported definition and no hidden cell; no control characters"
python tools/docs_check.py

step "pytest"
pytest -q -p no:cacheprovider tests
