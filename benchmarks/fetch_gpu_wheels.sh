#!/usr/bin/env bash
# Fetch, on a machine with pip access, the wheels that benchmarks/gpu_check.sh installs on a GPU
# machine without network: the packages this project needs that a CUDA PyTorch image usually
# lacks (diffusers and its importlib_metadata, bitsandbytes, xformers), and advunlearn itself from this
# checkout (kernels/ and cli/ are installed inside the package, so the source tree alone does not
# import). They land in benchmarks/wheels/ (git-ignored; about 60 MB, and the device tool carries
# at most 64 MiB with the working tree): run this again after changing the code.
#
#   bash benchmarks/fetch_gpu_wheels.sh                      # for the GPU machine's Python 3.12
#   GPU_PYTHON=3.11 bash benchmarks/fetch_gpu_wheels.sh      # another Python there
#
# xformers is not installed where the tests run (its attention is CUDA-only): its version is pinned
# here, XFORMERS_VERSION to change it, XFORMERS_VERSION=none to leave it out. 0.0.35 is a 3.3 MB
# wheel that declares torch >= 2.10 (the GPU image has 2.11; not run there yet); older xformers
# wheels are built for one torch version each.
set -euo pipefail
cd "$(dirname "$0")"

# The versions installed here, so that the GPU runs what the tests here ran against.
installed() {
    python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null
}
pin() {
    local version
    version=$(installed "$1") && echo "$1==$version" || echo "$1"
}

xformers=${XFORMERS_VERSION:-0.0.35}
extra=()
[ "$xformers" != none ] && extra=("xformers==$xformers")

rm -rf wheels
python3 -m pip download --no-deps --only-binary=:all: --dest wheels \
    --python-version "${GPU_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "$(pin diffusers)" "$(pin importlib_metadata)" "$(pin bitsandbytes)" ${extra[@]+"${extra[@]}"}

# Built from a copy of the sources: setuptools leaves build/ in the tree it builds.
source=$(mktemp -d)
cp -r ../advunlearn_fast ../kernels ../cli ../setup.py ../README.md "$source"
python3 -m pip wheel --no-deps --no-build-isolation -q -w wheels "$source"
rm -rf "$source"
ls -l wheels
