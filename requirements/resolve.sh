#!/usr/bin/env bash
# Checks that every requirement set resolves with pip's resolver under Python 3.11 and 3.12 on
# this Linux x86_64 machine, installing nothing (`pip install --dry-run --report`). A native
# resolve, not `--python-version/--platform`: those demand wheels only, and tensorflow-datasets
# needs `promise`, which exists only as a source distribution.
#   PY311=python3.11 PY312=python3.12 bash requirements/resolve.sh [out_dir]
set -u
cd "$(dirname "$0")"
out="${1:-/tmp/lstmrec_resolve}"
mkdir -p "$out"
status=0
for set in cpu cuda12 cuda13 tpu; do
  for py in 3.11 3.12; do
    var="PY${py/./}"
    python="${!var:-python$py}"
    report="$out/${set}_py${py}.json"
    if "$python" -m pip install --dry-run --ignore-installed --quiet --report "$report" \
        -r "$set.txt" > "$out/${set}_py${py}.log" 2>&1; then
      "$python" - "$report" "$set" "$py" <<'PY'
import json, sys
report, name, py = sys.argv[1:]
pins = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
        for i in json.load(open(report))["install"]}
keys = ["jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin",
        "jax-cuda13-pjrt", "libtpu", "flax", "optax", "orbax-checkpoint", "etils", "numpy",
        "tensorflow-cpu", "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime",
        "nvidia-cudnn-cu12", "nvidia-cudnn-cu13"]
got = ", ".join(f"{k} {pins[k]}" for k in keys if k in pins)
print(f"{name} py{py}: resolves, {len(pins)} packages: {got}")
PY
    else
      status=1
      echo "$set py$py: FAILS: $(grep -v '^WARNING' "$out/${set}_py${py}.log" | grep -m2 ERROR)"
    fi
  done
done
exit $status
