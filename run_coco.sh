#!/usr/bin/env bash
# The pipeline on COCO 2014 (stages 1-3: train_cam, make_cam, eval_cam).
# `bash run_coco.sh --help` lists the options.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
DATASET=coco
DATA_ROOT=datasets/coco2014
WORK_DIR=""
METHOD=ae_sipe
TRAIN_SPLIT=train
EVAL_SPLIT=train
source scripts/pipeline.sh
parse_driver_args "$@"
if [ "$TOY" = 1 ]; then
    WORK_DIR="${WORK_DIR:-runs/toy}"
    use_toy_dataset
fi
WORK_DIR="${WORK_DIR:-runs/coco_$METHOD}"
run_localization_stages
