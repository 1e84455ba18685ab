#!/usr/bin/env bash
# One model served across the nodes of a GPU job, the real thing (what the CPU build of vLLM
# cannot run here: the Ray backend, pipeline stages). Run it inside a PBS or Slurm job of 2+
# GPU nodes, from the job's working directory on a shared file system:
#
#   bash scripts/gpu/serve_multinode.sh ray  MODEL TP PP [INTERFACE]
#   bash scripts/gpu/serve_multinode.sh mp   MODEL TP PP [INTERFACE]
#
# e.g. `bash scripts/gpu/serve_multinode.sh ray /models/Llama-3.1-405B-Instruct 8 2 hsn0` on
# 2 Aurora or Polaris-class nodes. It brings Ray up (backend ray), starts the servers in the
# background, waits until every endpoint is ready and verified, sends 8 prompts through the
# dispatcher at temperature 0, shows the registry, then stops the servers and takes Ray down
# (also when a step fails). Exit status: the first failed step's.
#
# The servers listen on every address of their nodes (--host 0.0.0.0), so they require an
# API key: put it in $HPCINFER_API_KEY (or in the variable $API_KEY_ENV names) first.
# (Arrays are expanded as ${a[@]+"${a[@]}"}: bash before 4.4 takes an empty one for unset.)
set -euo pipefail
backend=${1:?backend: ray or mp}; model=${2:?model directory or id}
tp=${3:?TP}; pp=${4:?PP}; interface=${5:-}
hpcinfer=${HPCINFER:-hpcinfer}
work=${WORK_DIR:-$PWD/serve-multinode-$$}
mkdir -p "$work" && cd "$work"
iface=(); [ -n "$interface" ] && iface=(--interface "$interface")
launcher=(--launcher "${LAUNCHER:-mpi}")
key_env=${API_KEY_ENV:-HPCINFER_API_KEY}
if [ -z "${!key_env:-}" ]; then
  echo "serve_multinode.sh: the servers listen on 0.0.0.0, so they need an API key: export $key_env (or set API_KEY_ENV to the variable that holds it)" >&2
  exit 2
fi
export "${key_env?}"
cleanup() {
  [ -n "${serve_pid:-}" ] && kill -TERM "$serve_pid" 2>/dev/null && wait "$serve_pid" || true
  [ "$backend" = ray ] && "$hpcinfer" ray down --cluster-file "$work/ray.json" || true
}
trap cleanup EXIT

if [ "$backend" = ray ]; then
  "$hpcinfer" ray up "${launcher[@]}" ${iface[@]+"${iface[@]}"} --cluster-file "$work/ray.json" --ready-timeout 5m
  cluster=(--ray-cluster "$work/ray.json")
else
  cluster=()
fi
"$hpcinfer" serve --backend "$backend" --model "$model" --tp "$tp" --pp "$pp" \
  "${launcher[@]}" ${iface[@]+"${iface[@]}"} ${cluster[@]+"${cluster[@]}"} \
  --host 0.0.0.0 --api-key-env "$key_env" --endpoints endpoints.json \
  --max-model-len 4096 --ready-timeout 30m &
serve_pid=$!
"$hpcinfer" endpoints --endpoints endpoints.json --wait 30m
for i in $(seq 1 8); do echo "Question $i: name a prime number larger than $((i * 10))."; done > prompts.txt
"$hpcinfer" run prompts.txt --engine openai --endpoints endpoints.json \
  --api-key-env "$key_env" -o out \
  --temperature 0 --seed 0 --max-tokens 32 --json
cat endpoints.json
