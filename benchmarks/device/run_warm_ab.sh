#!/bin/bash
# Device call 2 of 2 (benchmarks/results/2026-12-03-h200-warm.md), after prepare.sh built llama-cpp-python with
# CUDA on the same warm machine. .gpu/b carries the GGUF's second part, its sha256 and `git archive`s with a
# SNAPSHOT file: new.tgz (the commit measured), last.tgz (the one before it) and base.tgz (an older one for run.py).
# Each step runs under its own timeout, tee'd into $OUT/summary.txt:
#   1. warm_probe.py on new and on last: the captured Claude Code request cold, warm after 0, 0.6 and 2 s, and
#      after a restart (from disk), with each request's server-side split (prepare, queue, prefill);
#   2. warm_probe.py on new under py-spy (native frames): where a warm turn and a restore spend their time;
#   3. run.py on new: raw llama-cpp-python against Pensieve (single requests, streams, Claude Code cold/warm);
#   4. run.py on base (Pensieve only), if time is left.
LIMIT=${LIMIT:-540}
source "$(dirname "$0")/call2_setup.sh"

probe() {  # probe <snapshot> <label> [extra args]
  local v=$1 label=$2; shift 2
  if fits 60 "warm_probe $label"; then
    echo "== warm_probe.py, server from $v ($label)" | tee -a $S
    timeout $(( $(left) - 10 < 120 ? $(left) - 10 : 120 )) python3 /tmp/new/benchmarks/warm_probe.py --repo /tmp/$v \
      --gaps 0,0.6,2 --restart --json $OUT/probe-$label.json --keep-log $OUT/probe-$label.log "$@" 2>&1 | tee -a $S
  fi
}
probe new new
[ -d /tmp/last ] && probe last last
probe new new-spy --py-spy /tmp/spy-new
(cd /tmp && tar czf $OUT/spy.tgz spy-new* 2>/dev/null)

runpy new raw-llamacpp,pensieve-llamacpp 220
runpy base pensieve-llamacpp 150
echo "done in $(( $(date +%s) - START )) s" | tee -a $S
