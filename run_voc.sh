#!/usr/bin/env bash
# The pipeline on PASCAL VOC 2012 (stages 1-3: train_cam, make_cam, eval_cam), or on the
# embedded toy dataset with --toy. `bash run_voc.sh --help` lists the options.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
DATASET=voc
DATA_ROOT=datasets/VOCdevkit/VOC2012
WORK_DIR=""
METHOD=ae_sipe
TRAIN_SPLIT=train_aug
EVAL_SPLIT=train
source scripts/pipeline.sh
parse_driver_args "$@"
if [ "$TOY" = 1 ]; then
    WORK_DIR="${WORK_DIR:-runs/toy}"
    use_toy_dataset
fi
WORK_DIR="${WORK_DIR:-runs/voc_$METHOD}"
run_localization_stages
