#!/bin/bash
# The device calls of a GPU session, from the repository root of the device's copy:
#   bash benchmarks/gpu_session.sh e2e smoke     # first call: train.py timed + a short xd check
#   XD_DEADLINE_S=420 bash benchmarks/gpu_session.sh xd   # the cross-domain table's runs
#   XD_PARALLEL=18 XD_DEADLINE_S=540 bash benchmarks/gpu_session.sh levers   # issue 27's levers
#   XD_PARALLEL=12 XD_DEADLINE_S=420 bash benchmarks/gpu_session.sh xd_ladder  # merged_ds, xd_shared
# The device lacks TensorFlow (the numpy input backend serves), ml_collections and tensorboardX
# (wheels for Python 3.12 in the git-ignored .whl/, carried); ../shared/data is the carried
# .devdata/ (amazon-beauty, amazon-cross-domain). If the device's flax / optax / orbax fail the
# smoke import, the repository's pins (.whl/pinned/) are installed over them. Results go to $OUT.
set -u
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
PY=${PY:-python3}
log() { echo "[$(date -u +%T)] $*" | tee -a "$OUT/session.log"; }

install() {  # $1: a folder of wheels
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$1"/*.whl || return 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then install .whl || log "wheel install failed"; fi
if [ ! -e ../shared/data ] && [ -d .devdata ]; then mkdir -p ../shared && ln -s "$PWD/.devdata" ../shared/data; fi
CHECK='import jax, flax, optax, orbax.checkpoint as ocp, ml_collections, tensorboardX
import lstmrec_jax.train.loop, lstmrec_jax.cli.train
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "devices", jax.devices())'
if ! $PY -c "$CHECK" >> "$OUT/session.log" 2>&1; then
  log "imports failed with the device's packages; installing the pinned flax / optax / orbax"
  install .whl/pinned && $PY -c "$CHECK" >> "$OUT/session.log" 2>&1 || log "imports still fail"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; } >> "$OUT/session.log" 2>&1

# A job file through run_jobs.py: $1 the stage's name (its files in $OUT), $2 the job file, $3
# eval.py's flags after each run. XD_PARALLEL, XD_DEADLINE_S (leave the call's timeout 40 s more),
# XD_FLAGS (train.py flags for every job) and XD_MATCH (a regex of job names) apply to every stage.
jobs_stage() {
  log "$1 jobs ($2): parallel ${XD_PARALLEL:-12}, deadline ${XD_DEADLINE_S:-420} s"
  $PY benchmarks/run_jobs.py --jobs "$2" --runs "/tmp/$1" \
    --parallel "${XD_PARALLEL:-12}" --deadline_s "${XD_DEADLINE_S:-420}" --start_margin_s 60 \
    --eval_args="$3" --match "${XD_MATCH:-.}" \
    --common_flags="--config.train.progress_bar=False --config.input.backend=numpy ${XD_FLAGS:-}" \
    --out "$OUT/$1_jobs.json" --pack "$OUT/$1_runs.tar.gz" > "$OUT/$1.log" 2>&1
  log "rc $?"
}

for stage in "$@"; do
  case $stage in
    e2e)
      # Beauty's recipe unchanged (f32, batch 32), then with bf16 operands: the real train.py.
      log "e2e recipe f32"
      timeout 150 $PY benchmarks/gpu_train_e2e.py --preset recipe --tag recipe \
        --set loss.compute_dtype=float32 --workdir /tmp/e2e_recipe --out "$OUT/gpu_train_e2e_recipe.json" > "$OUT/e2e_recipe.log" 2>&1
      log "rc $?"
      log "e2e recipe bf16"
      timeout 100 $PY benchmarks/gpu_train_e2e.py --preset recipe --tag recipe_bf16 \
        --set model.compute_dtype=bfloat16 --set loss.compute_dtype=bfloat16 \
        --workdir /tmp/e2e_bf16 --out "$OUT/gpu_train_e2e_recipe_bf16.json" > "$OUT/e2e_bf16.log" 2>&1
      log "rc $?"
      ;;
    smoke)
      # Short xd and merged runs and a transfer from the merged one: the paths, init_from, eval.
      printf '%s\n' "fk_xd_smoke configs/food_kitchen.py:xd --config.train.num_epochs=1" \
        "fk_merged_smoke configs/food_kitchen.py:merged --config.train.num_epochs=1" \
        "fk_tr_smoke configs/food_kitchen.py:Food --config.train.num_epochs=1 --config.train.init_from={runs}/fk_merged_smoke" \
        > /tmp/smoke_jobs.txt
      log "smoke"
      timeout 150 $PY benchmarks/run_jobs.py --jobs /tmp/smoke_jobs.txt --runs /tmp/smoke --parallel 2 \
        --eval_args=--domain_cold_start --deadline_s 110 \
        --common_flags="--config.train.progress_bar=False --config.input.backend=numpy" \
        --out "$OUT/smoke_jobs.json" --pack "$OUT/smoke.tar.gz" > "$OUT/smoke.log" 2>&1
      log "rc $?"
      ;;
    xd) jobs_stage xd benchmarks/jobs/cross_domain_3seeds.txt --domain_cold_start;;
    xd_ladder) jobs_stage xd_ladder benchmarks/jobs/cross_domain_ladder_3seeds.txt --domain_cold_start;;
    levers) jobs_stage levers benchmarks/jobs/quality_levers_3seeds.txt "";;
    *) log "unknown stage $stage"; exit 2;;
  esac
done
log "session done"
