#!/usr/bin/env bash
# Regenerate the results tables of docs/results.md from today's generator, in one command:
#   synthetic cohort (dmfn synth) -> dmfn, cnn and tabular trained with seeds 0, 1, 2 (dmfn train)
#   -> dmfn evaluate (seed 0 on test, seed 0 on validation, the summary over seeds)
#   -> the tables spliced into docs/results.md (or --into FILE) between the results markers.
# About 6 minutes on 2 CPU cores with the demo preset (synth ~2 min, the preprocessing cache and
# 9 trainings ~4 min, evaluations under a minute); the paper preset about 21 minutes.
#
# Usage: scripts/results.sh [--preset demo|paper] [--seed 2026] [--seeds 3] [--out DIR]
#                           [--reuse] [--into FILE | --no-splice]
#   --seeds N    train seeds 0 .. N-1 of every model (3)
#   --reuse      keep a cohort / trained runs already in DIR (otherwise they are redone)
#   --into FILE  the page whose results markers get the tables (docs/results.md; the paper
#                preset's page is docs/results_paper.md)
#   --no-splice  write DIR/results.md only, leave every page alone
set -euo pipefail
cd "$(dirname "$0")/.."

PRESET=demo
COHORT_SEED=2026
SEEDS=3
OUT=build/results
REUSE=0
INTO=docs/results.md
while [[ $# -gt 0 ]]; do
    case "$1" in
        --preset) PRESET=$2; shift 2 ;;
        --seed) COHORT_SEED=$2; shift 2 ;;
        --seeds) SEEDS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --reuse) REUSE=1; shift ;;
        --into) INTO=$2; shift 2 ;;
        --no-splice) INTO=; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "results.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

make -s setup
DMFN=.venv/bin/dmfn
mkdir -p "$OUT"
# Each stage's seconds go to OUT/timings/STAGE, so a --reuse run still reports the whole cost.
mkdir -p "$OUT/timings"
timed() {
    local stage=$1 start
    shift
    start=$(date +%s)
    "$@"
    echo $(( $(date +%s) - start )) > "$OUT/timings/$stage"
}
COHORT=$OUT/cohort
if [[ $REUSE == 1 && -f $COHORT/manifest.csv ]]; then
    echo "== cohort: reusing $COHORT"
else
    echo "== cohort: dmfn synth --preset $PRESET --seed $COHORT_SEED"
    timed synth $DMFN synth --preset "$PRESET" --seed "$COHORT_SEED" --workers 2 --out "$COHORT" --overwrite
fi

for MODEL in dmfn cnn tabular; do
    if [[ $REUSE == 1 && -f $OUT/$MODEL/summary.json ]]; then
        echo "== $MODEL: reusing $OUT/$MODEL"
        continue
    fi
    echo "== $MODEL: dmfn train --model $MODEL --seeds $SEEDS (seeds 0..$((SEEDS - 1)); defaults otherwise)"
    timed "train_$MODEL" $DMFN train --manifest "$COHORT/manifest.csv" --model "$MODEL" --seeds "$SEEDS" \
        --out "$OUT/$MODEL" --overwrite --no-progress
done

FIRST=0
run() { echo "$OUT/$1/seed_$FIRST/predictions_$2.csv"; }
echo "== dmfn evaluate: seed $FIRST on the test split (readers, cohort table, subgroups)"
timed evaluate_test $DMFN evaluate --overwrite --out "$OUT/report_test" \
    --predictions "$(run dmfn test)" --compare "$(run cnn test)" "$(run tabular test)" \
    --validation "$(run dmfn val)" "$(run cnn val)" "$(run tabular val)" \
    --readers "$COHORT/readers_simulated.csv" --manifest "$COHORT/manifest.csv"
echo "== dmfn evaluate: seed $FIRST on the validation split (selected on it: optimistic)"
timed evaluate_val $DMFN evaluate --overwrite --out "$OUT/report_val" \
    --predictions "$(run dmfn val)" --compare "$(run cnn val)" "$(run tabular val)"
echo "== dmfn evaluate: every seed on the test split"
runs=()
for MODEL in dmfn cnn tabular; do
    runs+=(--runs "$MODEL")
    for ((S = 0; S < SEEDS; S++)); do runs+=("$OUT/$MODEL/seed_$S/predictions_test.csv"); done
done
timed evaluate_seeds $DMFN evaluate --overwrite --out "$OUT/report_seeds" "${runs[@]}"

ELAPSED=0
for f in "$OUT"/timings/*; do ELAPSED=$(( ELAPSED + $(cat "$f") )); done
.venv/bin/python scripts/results_markdown.py --out "$OUT" --preset "$PRESET" \
    --cohort-seed "$COHORT_SEED" --seeds "$SEEDS" --elapsed "$ELAPSED" \
    ${INTO:+--into "$INTO"}
echo "== done; all stages took $((ELAPSED / 60)) min $((ELAPSED % 60)) s: $OUT/results.md" \
    "(reports: $OUT/report_test/report.html, $OUT/report_val, $OUT/report_seeds)"
