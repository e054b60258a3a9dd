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

if fits 90 "run.py new"; then
  echo "== run.py new: raw-llamacpp vs pensieve-llamacpp" | tee -a $S
  (cd /tmp/new && timeout $(( $(left) - 5 < 200 ? $(left) - 5 : 200 )) python3 -c "import llama_cpp, runpy, sys; sys.argv = ['benchmarks/run.py'] + sys.argv[1:]; runpy.run_path('benchmarks/run.py', run_name='__main__')" \
    --machine h200-new --out /tmp/results-new --max-tokens 256 --contenders raw-llamacpp,pensieve-llamacpp > /tmp/run-new.log 2>&1)
  echo "rc=$?" | tee -a $S
  grep -B2 -A12 "Concurrent streams\|Single requests\|Claude Code request" /tmp/results-new/*.md | tee -a $S
  cp /tmp/results-new/*.md $OUT/run-new.md 2>/dev/null; cp /tmp/results-new/*.json $OUT/run-new.json 2>/dev/null
  tail -8 /tmp/run-new.log | tee -a $S
fi

if [ -d /tmp/base ] && fits 80 "run.py base"; then  # Pensieve alone on the code before, same session
  echo "== run.py base: pensieve-llamacpp" | tee -a $S
  (cd /tmp/base && timeout $(( $(left) - 5 < 150 ? $(left) - 5 : 150 )) python3 -c "import llama_cpp, runpy, sys; sys.argv = ['benchmarks/run.py'] + sys.argv[1:]; runpy.run_path('benchmarks/run.py', run_name='__main__')" \
    --machine h200-base --out /tmp/results-base --max-tokens 256 --contenders pensieve-llamacpp > /tmp/run-base.log 2>&1)
  echo "rc=$?" | tee -a $S
  grep -B2 -A12 "Concurrent streams\|Single requests\|Claude Code request" /tmp/results-base/*.md | tee -a $S
  cp /tmp/results-base/*.md $OUT/run-base.md 2>/dev/null; cp /tmp/results-base/*.json $OUT/run-base.json 2>/dev/null
fi

if fits 60 "py-spy of new"; then
  echo "== py-spy, new, 4 streams" | tee -a $S
  timeout $(( $(left) - 5 )) python3 /tmp/new/benchmarks/overhead.py --server new=/tmp/new --real-decode --streams 4 \
    --rounds 1 --max-tokens 256 --py-spy /tmp/spy --profile-seconds 6 --work /tmp/ow-spy 2>&1 | grep -v "^warm" | tee -a $S
  (cd /tmp && tar czf $OUT/spy.tgz spy 2>/dev/null)
fi
echo "done in $(( $(date +%s) - START )) s" | tee -a $S
