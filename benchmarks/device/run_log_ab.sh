#!/bin/bash
# Device call 2 of 2 (benchmarks/results/2026-12-03-h200-log.md), after prepare.sh built llama-cpp-python with CUDA
# on the same warm machine. .gpu/b carries the GGUF's second part, its sha256 and two `git archive`s with a SNAPSHOT
# file: base.tgz (llama.cpp's log through llama-cpp-python's Python callback, sampling at temperature > 0 through
# llama.cpp's chain), log.tgz (a native log no-op once loaded: engine/llamacpp_log.py) and new.tgz (that plus every
# request sampled in numpy: engine/sampling.py). Each step runs under its own timeout, tee'd into $OUT:
#   1. overhead.py with real decodes, base, log and new alternating, every server counting the llama.cpp messages
#      that reach Python per step (--count-log); 1/4/8 streams at temperature 0.2 (what Claude Code's requests get)
#      and at 0 (greedy);
#   2. run.py on new: raw llama-cpp-python against Pensieve (single requests, streams, Claude Code cold/warm);
#   3. py-spy of new at 4 streams, if time is left.
LIMIT=${LIMIT:-560}
source "$(dirname "$0")/call2_setup.sh"

for T in ${TEMPERATURES:-0.2 0}; do
  if fits 120 "overhead.py real decodes, temperature $T"; then
    echo "== overhead.py, real decodes, temperature $T, base vs log vs new, llama.cpp messages to Python counted" | tee -a $S
    timeout $(( $(left) - 10 < 200 ? $(left) - 10 : 200 )) python3 /tmp/new/benchmarks/overhead.py $(cd $B && for v in $(ls *.tgz | sed 's/.tgz$//'); do echo --server $v=/tmp/$v; done) --real-decode --count-log --temperature $T --streams 1,4,8 \
      --rounds ${ROUNDS:-2} --max-tokens 256 --out $OUT/overhead-real-t$T.json --work /tmp/ow-real-$T 2>&1 | tee -a $S
  fi
done

runpy new raw-llamacpp,pensieve-llamacpp 200
runpy base pensieve-llamacpp 150  # Pensieve alone on the code before, same session

if fits 60 "py-spy of new"; then
  echo "== py-spy, new, 4 streams" | tee -a $S
  timeout $(( $(left) - 5 )) python3 /tmp/new/benchmarks/overhead.py --server new=/tmp/new --real-decode --streams 4 \
    --rounds 1 --max-tokens 256 --py-spy /tmp/spy --profile-seconds 6 --work /tmp/ow-spy 2>&1 | grep -v "^warm" | tee -a $S
  (cd /tmp && tar czf $OUT/spy.tgz spy 2>/dev/null)
fi
echo "done in $(( $(date +%s) - START )) s" | tee -a $S
