#!/usr/bin/env bash
# The one-line outcomes of the README's fault table (hardening round two): each case, its exit status, its stderr.
# Run from the repository root: bash benchmarks/probes/fault_lines.sh [PYTHON]
set -u
PY=${1:-.venv/bin/python}
OUT=$(mktemp -d)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
Q="recipes/quickstart.yaml train.epochs=1 data.max_train_samples=128 eval.explain=false train.report_to=none"
case_line() {  # NAME ARGS...
  local name=$1; shift
  "$PY" -m hfvision train "$@" >/dev/null 2>"$OUT/stderr"
  local status=$?
  echo "$name | exit $status | $(grep -c . "$OUT/stderr") line(s) | $(tail -1 "$OUT/stderr")"
}
run_q() { local name=$1; shift; case_line "$name" $Q "output_dir=$OUT/$name" "$@"; }
run_q lr_inf train.learning_rate=.inf
run_q wd_inf train.weight_decay=.inf
run_q mean_nan 'data.mean=[.nan, 0.5, 0.5]'
run_q std_inf 'data.std=[.inf, 1, 1]'
run_q warmup_inf train.warmup_epochs=.inf
run_q budget_inf train.time_budget_minutes=.inf
run_q seed_neg seed=-1
run_q seed_big seed=1180591620717411303424
run_q val_999 data.val_fraction=0.999
run_q crop_pad data.augment.random_crop_padding=100000
printf 'seed: 1\n\xff\n' > "$OUT/bad.yaml"; case_line non_utf8 "$OUT/bad.yaml"
printf 'train:\n  epochs: 1\n  epochs: 2\n' > "$OUT/dup.yaml"; case_line duplicate_key "$OUT/dup.yaml"
case_line directory_recipe recipes
# a run with EMA, then its checkpoint damaged three ways
"$PY" -m hfvision train $Q output_dir="$OUT/ema" train.ema_decay=0.9 >/dev/null 2>&1
for damage in model.safetensors optimizer.bin trainer_state.json; do
  cp -r "$OUT/ema" "$OUT/ema_$damage"
  f="$OUT/ema_$damage/checkpoint/$damage"; head -c $(( $(stat -c %s "$f") / 2 )) "$f" > "$f.cut"; mv "$f.cut" "$f"
  case_line "truncated_$damage" $Q output_dir="$OUT/ema_$damage" train.ema_decay=0.9 train.epochs=2 train.resume=true
done
rm -rf "$OUT/ema/best"
"$PY" -m hfvision train $Q output_dir="$OUT/ema" train.ema_decay=0.9 train.resume=true 2>/dev/null | grep "best/ is missing"
rm -rf "$OUT"
