#!/usr/bin/env bash
# Regenerate the ablation results of docs/training.md in one command: the experiments behind the
# choices where the paper is silent or where we depart from it, each reported by `dmfn evaluate`
# (test split first, DeLong CIs, paired DeLong p-values).
#
#   fusion   (paper preset, seeds 0-2): cnn, tabular, dmfn (concat, the paper's), and dmfn
#            composed from the trained cnn + tabular experts (two-stage): untrained (the
#            calibrated product), fine-tuned, and with frozen experts
#   backbone (demo preset, seeds 0-2): dmfn with regnetx_tiny, selfreg_tiny_gru and
#            regnety_400mf (add selfreg_resnet18_gru with BACKBONES=...; ~12 min per seed here)
#   inputs   (demo preset, seeds 0-2): dmfn with the lesion measurements in the tabular branch,
#            dmfn with the thymoma A/AB-benign grouping, dmfn with version-1 PDE settings
#
# Several hours on 2 CPU cores (the paper cohort alone renders in ~15 min). Stages can be run
# alone and reuse what exists: scripts/ablations.sh [--out DIR] [--stage fusion|backbone|inputs|report]
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=build/ablations
STAGES="fusion backbone inputs report"
SEED=2026
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --stage) STAGES=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "ablations.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
make -s setup
DMFN=.venv/bin/dmfn
mkdir -p "$OUT/timings"

timed() {  # timed NAME command...: skip when OUT/NAME/summary.json exists; record the seconds
    local name=$1 start
    shift
    if [[ -f $OUT/$name/summary.json ]]; then echo "== $name: reusing"; return; fi
    echo "== $name: $*"
    start=$(date +%s)
    "$@" --out "$OUT/$name" --overwrite --no-progress --seeds 3
    echo $(( $(date +%s) - start )) > "$OUT/timings/$name"
}

cohort() {  # cohort PRESET: render once with seed $SEED
    local dir=$OUT/$1
    if [[ ! -f $dir/manifest.csv ]]; then
        $DMFN synth --preset "$1" --seed "$SEED" --workers 2 --out "$dir" --overwrite
    fi
}

runs() {  # runs SPLIT NAME...: the --runs arguments of dmfn evaluate
    local split=$1 name
    shift
    for name in "$@"; do
        printf -- '--runs %s ' "$name"
        for s in 0 1 2; do printf '%s ' "$OUT/$name/seed_$s/predictions_$split.csv"; done
    done
}

for STAGE in $STAGES; do case $STAGE in
fusion)
    cohort paper
    M=$OUT/paper/manifest.csv
    timed paper_cnn $DMFN train --manifest "$M" --model cnn
    timed paper_tabular $DMFN train --manifest "$M" --model tabular
    timed paper_dmfn $DMFN train --manifest "$M" --model dmfn
    experts=(--model dmfn --fusion experts --init-ct "$OUT/paper_cnn" --init-tabular "$OUT/paper_tabular")
    timed paper_product $DMFN train --manifest "$M" "${experts[@]}" --epochs 0
    timed paper_experts_tuned $DMFN train --manifest "$M" "${experts[@]}" --epochs 10 --lr 1e-4
    timed paper_experts_frozen $DMFN train --manifest "$M" "${experts[@]}" --epochs 10 --freeze-experts
    ;;
backbone)
    cohort demo
    M=$OUT/demo/manifest.csv
    for B in ${BACKBONES:-regnetx_tiny selfreg_tiny_gru regnety_400mf}; do
        timed "demo_$B" $DMFN train --manifest "$M" --model dmfn --backbone "$B"
    done
    ;;
inputs)
    cohort demo
    M=$OUT/demo/manifest.csv
    timed demo_measurements $DMFN train --manifest "$M" --model dmfn --tabular-measurements
    timed demo_pde_v1 $DMFN train --manifest "$M" --model dmfn \
        --params '{"pde_k_hu": 20.0, "pde_dt": 0.0125, "pde_iterations": 20, "pde_spacing_aware": false}'
    if [[ ! -f $OUT/demo_regrouped/manifest.csv ]]; then  # the same patients, regrouped
        $DMFN synth --preset demo --seed "$SEED" --dry-run --grouping thymoma_a_ab_benign \
            --out "$OUT/demo_regrouped" --overwrite
        ln -sfn "$(realpath "$OUT/demo/images")" "$OUT/demo_regrouped/images"
        ln -sfn "$(realpath "$OUT/demo/masks")" "$OUT/demo_regrouped/masks"
    fi
    timed demo_thymoma_ab_benign $DMFN train --manifest "$OUT/demo_regrouped/manifest.csv" \
        --cache-dir "$OUT/demo/.dmfn_cache" --model dmfn --grouping thymoma_a_ab_benign
    ;;
report)
    for SPLIT in test val; do
        # shellcheck disable=SC2046
        $DMFN evaluate --overwrite --out "$OUT/report_fusion_$SPLIT" --split "$SPLIT" \
            $(runs "$SPLIT" paper_dmfn paper_experts_tuned paper_experts_frozen paper_product paper_cnn paper_tabular)
        # shellcheck disable=SC2046
        $DMFN evaluate --overwrite --out "$OUT/report_experts_vs_cnn_$SPLIT" --split "$SPLIT" \
            $(runs "$SPLIT" paper_experts_tuned paper_cnn)
        # shellcheck disable=SC2046
        $DMFN evaluate --overwrite --out "$OUT/report_backbone_$SPLIT" --split "$SPLIT" \
            $(runs "$SPLIT" $(for B in ${BACKBONES:-regnetx_tiny selfreg_tiny_gru regnety_400mf}; do echo "demo_$B"; done))
        # shellcheck disable=SC2046
        $DMFN evaluate --overwrite --out "$OUT/report_inputs_$SPLIT" --split "$SPLIT" \
            $(runs "$SPLIT" demo_regnetx_tiny demo_measurements demo_pde_v1)
        # shellcheck disable=SC2046
        $DMFN evaluate --overwrite --out "$OUT/report_grouping_$SPLIT" --split "$SPLIT" --grouping thymoma_a_ab_benign \
            $(runs "$SPLIT" demo_thymoma_ab_benign)
    done
    .venv/bin/python scripts/ablations_markdown.py --out "$OUT" --into docs/training.md
    ;;
*) echo "ablations.sh: unknown stage $STAGE" >&2; exit 2 ;;
esac; done
