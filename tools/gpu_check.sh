#!/usr/bin/env bash
# The one prepared device check, for a machine with a CUDA GPU (CI never runs it):
#   1. the environment (torch, CUDA, the GPU, which course and reference libraries import);
#   2. every chapter with its `#| cuda` cells (nbdev_test --flags cuda);
#   3. the tests in tests/ that name cuda, if any;
#   4. the GPU benchmarks (`pe bench --quick --device cuda`: time and bias, then rotary and memory);
#   5. the lab on cuda (`pe lab --quick --device cuda`), if the `lab` command exists.
# One log (gpu_check.log) and the results files (bench/, bench_memory/, lab/, summary.txt) go to OUT_DIR
# (argument; default $OUT, else gpu_out/). Everything finishes inside GPU_CHECK_BUDGET seconds
# (default 460, under 8 minutes): each step runs under `timeout` with the smaller of its own limit
# and what is left. Needs a checkout whose Python has torch with CUDA and what
# `pip install -e ".[course,bench]"` brings; nothing is downloaded.
#
#   bash tools/gpu_check.sh [OUT_DIR] [--dry-run]     # --dry-run prints the steps and runs nothing
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0; outdir=""
for a in "$@"; do
  case "$a" in
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "unknown option $a" >&2; exit 2 ;;
    *) outdir=$a ;;
  esac
done
outdir=${outdir:-${OUT:-gpu_out}}
budget=${GPU_CHECK_BUDGET:-460}
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg PYTHONWARNINGS="ignore::DeprecationWarning"
# `pe`, without needing the package installed (the checkout is on PYTHONPATH)
pe=(python -c "import sys; from positional_embeddings_pytorch.cli import main; sys.exit(main(sys.argv[1:]))")
mkdir -p "$outdir"; log="$outdir/gpu_check.log"; summary="$outdir/summary.txt"
[ $dry = 1 ] || : > "$log"; : > "$summary"
t0=$(date +%s)

say() { if [ $dry = 1 ]; then echo "$*"; else echo "$*" | tee -a "$log"; fi; }
# step NAME LIMIT_S CMD...: run CMD under timeout(min(LIMIT_S, what is left)), log it, note the result
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( budget - ($(date +%s) - t0) - 5 ))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then say "== $name: skipped, the time budget is spent"; echo "SKIP  $name (budget spent)" >> "$summary"; return 0; fi
  if [ $dry = 1 ]; then echo "== $name (timeout ${limit}s): $*"; echo "DRY   $name" >> "$summary"; return 0; fi
  say ""; say "== $name (timeout ${limit}s, $(date -u +%T) UTC): $*"
  local s=$(date +%s) rc=0
  timeout -k 10 "$limit" "$@" >> "$log" 2>&1 || rc=$?
  local took=$(( $(date +%s) - s )) verdict=ok
  case $rc in 0) ;; 124|137) verdict="TIMEOUT" ;; *) verdict="FAIL(rc=$rc)" ;; esac
  say "-- $name: $verdict in ${took}s"
  printf '%-8s %s (%ss)\n' "$verdict" "$name" "$took" >> "$summary"
}
has_option() { "${pe[@]}" "$1" --help 2>/dev/null | grep -- "$2" >/dev/null; }

say "gpu_check: budget ${budget}s, results in $outdir"
step "environment" 30 python -c "
import importlib, torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available(): print('device', torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
for m in 'nbdev fastcore execnb matplotlib transformers enformer_pytorch rotary_embedding_torch x_transformers'.split():
    try: importlib.import_module(m); print('ok     ', m)
    except Exception as e: print('MISSING', m, type(e).__name__)
raise SystemExit(0 if torch.cuda.is_available() else 3)"
if [ $dry = 0 ] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  say "no CUDA device here: nothing else to check"; cat "$summary"; exit 3
fi

# One fresh process per notebook (as tools/test.sh does: torch.compile caches guards on `__main__`),
# four at a time; each notebook's own log in chapters/, one line per notebook in the main log.
mkdir -p "$outdir/chapters"
step "chapters with their cuda cells (nbdev_test --flags cuda)" 210 sh -c '
  ls nbs/*.ipynb | xargs -P 4 -I{} sh -c "n=\$(basename {} .ipynb); nbdev_test --path {} --flags cuda --timing > \"$1/chapters/\$n.log\" 2>&1 && echo \"ok   \$n: \$(tail -n1 \"$1/chapters/\$n.log\")\" || { echo \"FAIL \$n (chapters/\$n.log)\"; exit 1; }"' _ "$outdir"

if grep -lq "cuda" tests/*.py 2>/dev/null; then
  step "tests that name cuda (pytest -k cuda)" 90 \
    sh -c 'pytest -q -p no:cacheprovider tests -k cuda; rc=$?; [ $rc = 5 ] && { echo "no test selected"; exit 0; }; exit $rc'
else
  say "== tests: no test in tests/ names cuda"
fi

if has_option bench --device; then
  # float32 and bfloat16; two runs so that the time table (ours against SDPA's flash and cuDNN kernels and
  # FlexAttention) is written even if the memory cells (one torch.compile per flex cell) run out of time;
  # each run writes results.md and results.json after every section, so a timeout keeps what was measured
  step "GPU benchmarks: time and bias (pe bench --quick --device cuda)" 120 \
    "${pe[@]}" bench --quick --device cuda --section time --section bias --out "$outdir/bench"
  step "GPU benchmarks: rotary and memory (pe bench --quick --device cuda)" 120 \
    "${pe[@]}" bench --quick --device cuda --section rotary --section memory --out "$outdir/bench_memory"
else
  say "== benchmarks: \`pe bench\` takes no --device option, so it would measure the CPU: skipped"
  echo "SKIP  pe bench (no --device option)" >> "$summary"
fi

if has_option lab --device; then
  step "the lab on cuda (pe lab --quick --device cuda)" 100 "${pe[@]}" lab --quick --device cuda --no-progress --out "$outdir/lab"
else
  say "== lab: no \`pe lab\` command with a --device option: skipped"
  echo "SKIP  pe lab (no command)" >> "$summary"
fi

say ""; say "== summary ($(( $(date +%s) - t0 ))s of ${budget}s)"
if [ $dry = 1 ]; then cat "$summary"; else cat "$summary" | tee -a "$log"; fi
! grep -qE '^(FAIL|TIMEOUT)' "$summary"
