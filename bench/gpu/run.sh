#!/usr/bin/env bash
# The GPU check in one command: install what the GPU machine lacks from .whl/, run the CUDA
# tests, the 256 px quality race (ours vs lightweight-gan, FID), the benchmarks (ours and
# the peers'), print one table and write everything under OUTDIR (default $OUT, the device
# tool's folder, else /tmp/gpu-check):
#   gpu.json (every figure, the environment and the commit), summary.txt (the table),
#   pytest.txt (the CUDA tests), log.txt (everything), profile.txt (where our StyleGAN2
#   step's device time goes), quality-fid.csv, quality-fid.png and quality-samples.jpg
#   (the race): 8 files, as many as the device tool returns.
#
#   bench/gpu/run.sh [OUTDIR]             on the GPU machine (docs/benchmarks.md, "GPU check")
#   bench/gpu/run.sh [OUTDIR] --dry-run   the rehearsal on a CPU machine: builds .whl/ and
#       the carry (prepare.py), a stand-in venv with only the machine's packages
#       (rehearsal.py), installs the same wheels for this Python with --no-index, and runs
#       the same steps on the CPU at 32 px for 1 step. CI runs it.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
DRY=""
OUTDIR="${OUT:-/tmp/gpu-check}"
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY="--dry-run" ;;
        *) OUTDIR="$arg" ;;
    esac
done
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
: >"$OUTDIR/log.txt"
exec > >(tee -a "$OUTDIR/log.txt") 2>&1
export PYTHONUNBUFFERED=1
START=$(date +%s)
# the device tool allows 10 minutes a command, the issue 9: every step below gets at most
# what is left of BUDGET_S (minus 20 s for the summary), so the figures are always written
BUDGET_S=${BUDGET_S:-530}
elapsed() { echo "[$(($(date +%s) - START)) s] $*"; }
limit() {  # the smaller of $1 and what the budget has left
    local left=$((BUDGET_S - 20 - ($(date +%s) - START)))
    [ "$left" -lt 5 ] && left=5
    echo $(($1 < left ? $1 : left))
}

SITE=/tmp/gpu-check-site
if [ -n "$DRY" ]; then
    elapsed "dry run: wheelhouse for the GPU machine (CPython 3.12)"
    bench/gpu/wheelhouse.sh || exit 1
    elapsed "carry: .gpu/ and .peers/"
    python3 bench/gpu/prepare.py || exit 1
    PYVER=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    elapsed "the same name==versions for this Python ($PYVER) in .whl-cp311/"
    python3 bench/gpu/wheelhouse.py --dest .whl --same-for .whl-cp311 --python "$PYVER" \
        2> >(grep -v '^WARNING: Location' >&2) || exit 1
    elapsed "stand-in for the machine's Python"
    PY=$(python3 bench/gpu/rehearsal.py /tmp/gpu-check-venv) || exit 1
    WHEELS=.whl-cp311
else
    PY=python3
    WHEELS=.whl
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

elapsed "install $WHEELS into $SITE (--no-index --no-deps)"
rm -rf "$SITE"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl || exit 1
export PYTHONPATH="$SITE:$REPO"
# ../shared does not travel to the GPU machine: the carried copy stands in for it
if [ ! -e ../shared ] && [ -d .gpu/shared ]; then
    ln -s "$REPO/.gpu/shared" ../shared && elapsed "linked ../shared to .gpu/shared"
fi
[ -z "$DRY" ] && "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"

elapsed "CUDA tests: pytest -m cuda"
# only this file: the other test modules import imagecodecs, dvc and pytest-httpserver,
# which the check does not carry; nor pytest-xdist: pyproject's addopts (-n auto) are dropped
timeout "$(limit 150)" "$PY" -m pytest tests/test_cuda.py -m cuda -q -rs -p no:cacheprovider -s \
    -o addopts="" \
    2>&1 | tee "$OUTDIR/pytest.txt"
TESTS=${PIPESTATUS[0]}

RESULTS=$(mktemp -d /tmp/gpu-check-results.XXXX)
# seconds each step may take on the GPU (the whole run must end inside 9 minutes), in the
# order they run: the quality race and NVlabs' StyleGAN2 have never been measured on a GPU,
# the other three were (docs/benchmarks.md, 2026-12-04) and get what is left
declare -A LIMIT=([quality]=240 [stylegan2]=150 [lightweight]=60 [stargan2]=40 [faces]=30
    [inception]=40)
ORDER="quality stylegan2 lightweight stargan2 faces inception"
benchmark() {  # name, time limit
    local seconds
    seconds=$(limit "$2")
    if [ "$seconds" -lt $(($2 / 2)) ]; then  # cut to a stub it could not finish in: skip it
        elapsed "benchmark: $1 skipped ($seconds s of the budget left, its limit $2 s)"
        echo "{\"bench\": \"$1\", \"impl\": \"-\", \"status\": \"skipped\"," \
            "\"reason\": \"$seconds s of the budget left, under half its $2 s\"}" \
            >>"$RESULTS/records.jsonl"
        return
    fi
    elapsed "benchmark: $1 (at most $seconds s)"
    timeout "$seconds" "$PY" bench/gpu/bench.py "$1" --results "$RESULTS" $DRY
    local status=$?
    if [ "$status" -ne 0 ]; then
        echo "{\"bench\": \"$1\", \"impl\": \"-\", \"status\": \"failed\"," \
            "\"reason\": \"exit status $status (124: over its $seconds s)\"}" \
            >>"$RESULTS/records.jsonl"
    fi
}
if [ -n "$DRY" ]; then
    BUDGET_S=100000  # the rehearsal's time is CI's to judge
    benchmark all 600  # one process: the CPU's minutes go to the steps, not to imports
else
    for what in $ORDER; do
        benchmark "$what" "${LIMIT[$what]}"
    done
fi

elapsed "summary"
STRICT=${DRY:+--strict}
python3 bench/gpu/summary.py --results "$RESULTS" --out "$OUTDIR/gpu.json" $STRICT \
    | tee "$OUTDIR/summary.txt"
SUMMARY=${PIPESTATUS[0]}
[ -f "$RESULTS/profile.txt" ] && cp "$RESULTS/profile.txt" "$OUTDIR/profile.txt"
for file in fid.csv fid.png samples.jpg; do
    [ -f "$RESULTS/quality/$file" ] && cp "$RESULTS/quality/$file" "$OUTDIR/quality-$file"
done
echo "CUDA tests exit status $TESTS; total $(($(date +%s) - START)) s" | tee -a "$OUTDIR/summary.txt"
[ "$TESTS" -eq 0 ] && [ "$SUMMARY" -eq 0 ]
