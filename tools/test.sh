#!/usr/bin/env bash
# Every check the project runs, in CI's order: the README's test command ends here.
#   nbdev_export + a diff check (the package is what the notebooks export), an nbdev_clean check,
#   nbdev_test (slow, cuda and notest cells skipped), nbdev_proc_nbs (docs processing, offline),
#   and pytest over tests/.
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

step "nbdev_test: every notebook runs (slow, cuda, notest cells skipped)"
# One fresh process per notebook, two at a time: torch.compile caches guards on `__main__`, which
# each notebook's shell replaces, so notebooks that share a worker process can trip over each other.
ls nbs/*.ipynb | xargs -P "${NBDEV_WORKERS:-2}" -I{} sh -c 'nbdev_test --path "$1" --timing >"$1.log" 2>&1 && echo "ok   $1: $(tail -n1 "$1.log")" || { echo "FAIL $1"; cat "$1.log"; exit 1; }' _ {}
rm -f nbs/*.ipynb.log

step "nbdev_proc_nbs: docs processing works offline"
# nbdev tries to download Quarto when it is missing; the site is rendered by the GitHub Actions
# workflow, so here a stand-in `quarto` on PATH keeps nbdev from fetching anything.
if ! command -v quarto >/dev/null 2>&1; then
  stub=$(mktemp -d); printf '#!/bin/sh\necho "quarto is not installed here; the docs workflow renders the site" >&2; exit 1\n' > "$stub/quarto"
  chmod +x "$stub/quarto"; PATH="$stub:$PATH" nbdev_proc_nbs; rm -r "$stub"
else
  nbdev_proc_nbs
fi

step "pytest"
pytest -q -p no:cacheprovider tests
