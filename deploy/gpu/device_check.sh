#!/usr/bin/env bash
# The GPU check of issue #9 on a lent GPU machine: the tests marked `gpu`, then the GPU-vs-CPU
# benchmark (python -m benchmarks.gpu). Outputs go to $OUT (the device tool brings them back).
#
# The lent machines (CUDA 13, Python 3.12) have CuPy (cupy-cuda13x), numpy, scipy,
# scikit-learn, h5py, xarray, pandas, typer, rich, matplotlib, numba, nvidia-ml-py and pytest,
# but not dask, distributed, zarr or their own needs. Those travel as wheels in .whl/ (never
# committed). Prepare them here, in the repository's root:
#
#   echo /.whl/ >> .git/info/exclude
#   for spec in dask==2026.8.0 distributed==2026.8.0 zarr==3.1.6 numcodecs==0.16.6 \
#       donfig==0.8.1.post1 google-crc32c==1.9.0 h5netcdf==1.8.2 partd==1.4.2 locket==1.0.0 \
#       tblib==3.2.2 zict==3.0.0 tornado==6.6.1 array-api-strict==2.6.1 \
#       dask-cuda==26.10.0 rapids-dask-dependency==26.10.0; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl "$spec"
#   done
#
# The versions are those of the development venv (dask and distributed must match each other;
# dask-cuda and rapids-dask-dependency are optional: without them the `--scheduler cuda` test
# skips). rapids-dask-dependency pins dask exactly: check its pin with
# `unzip -p .whl/rapids_dask_dependency-*.whl '*/METADATA' | grep ^Requires-Dist` and fetch
# that dask/distributed instead when it differs.
#
# Then, with the device tool: run(command="bash deploy/gpu/device_check.sh", carry=[".whl"],
# timeout_s=560). Argument: the benchmark's profile, full (4 GB X, default) or quick (0.5 GB).
set -uo pipefail
PROFILE=${1:-full}
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || { echo "wheel install failed" | tee "$OUT/install.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1

{
  nvidia-smi
  python3 -c "import sys, numpy, cupy, dask, distributed, zarr; \
print(sys.version); print('numpy', numpy.__version__, 'cupy', cupy.__version__, \
'cuda runtime', cupy.cuda.runtime.runtimeGetVersion(), 'dask', dask.__version__, \
'distributed', distributed.__version__, 'zarr', zarr.__version__)"
  python3 -c "import dask_cuda; print('dask-cuda', dask_cuda.__version__)" || true
} > "$OUT/machine.txt" 2>&1

status=0
# the GPU tests (and the CPU tests of the same modules, as a sanity check of the install)
timeout 240 python3 -m pytest -q -rs -p no:cacheprovider tests/test_device.py \
  tests/test_kernels_array_api.py 2>&1 | tee "$OUT/pytest.log" || status=1

[ "$PROFILE" = quick ] && flag=--quick || flag=
timeout 290 python3 -m benchmarks.gpu $flag 2>&1 | tee "$OUT/benchmark.log" || status=1
cp benchmarks/results/gpu-"$PROFILE".md benchmarks/results/gpu-"$PROFILE".json "$OUT"/ 2>/dev/null
exit $status
