#!/usr/bin/env bash
# Fill the git-ignored .whl/ with what the GPU machine lacks, as wheels for CPython 3.12 on
# manylinux x86-64 (the device README's pip download flags), one version of each, and print
# the total (the whole carry must stay under 64 MiB). Idempotent: wheels already there are
# kept. bench/gpu/wheelhouse.py holds the closure walk and the check.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 bench/gpu/wheelhouse.py --dest .whl --python 3.12 "$@" 2> >(grep -v '^WARNING: Location' >&2)
