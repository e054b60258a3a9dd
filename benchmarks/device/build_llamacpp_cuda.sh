#!/bin/bash
# Device call 1 of 2 (benchmarks/results/2026-12-02-h200-streams.md, and 2026-12-03 before run_overhead.sh): wheels,
# llama-cpp-python 0.3.36 built with CUDA, first part of the GGUF kept in /tmp.
export PYTHONUNBUFFERED=1
REPO=$(pwd)
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee $OUT/gpu.txt
nproc; python3 --version
cp .gpu/a/gguf.part1 /tmp/gguf.part1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/a/whl/*.whl || exit 1
mkdir -p /tmp/build && tar xzf .gpu/a/llama_cpp_python-0.3.36-slim.tar.gz -C /tmp/build || exit 1
cd /tmp/build/llama_cpp_python-0.3.36
export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=16
start=$(date +%s)
python3 -m pip wheel -v --no-build-isolation --no-deps --no-index -w /tmp/wheels . > $OUT/build.log 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - start )) s" | tee $OUT/build-summary.txt
tail -30 $OUT/build.log
[ $rc = 0 ] || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/wheels/llama_cpp_python*.whl || exit 1
cd $REPO
PYTHONPATH=/tmp/site python3 -c "import llama_cpp; print(llama_cpp.__version__, llama_cpp.llama_supports_gpu_offload(), llama_cpp.llama_print_system_info().decode())" | tee -a $OUT/build-summary.txt
ls -la /tmp/gguf.part1; ls /tmp/site/bin
