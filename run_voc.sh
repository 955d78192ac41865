#!/usr/bin/env bash
# The whole pipeline on PASCAL VOC 2012, or on the embedded toy dataset with --toy:
# classifier, CAMs, affinity labels, affinity network, pseudo-labels, and the mIoU of each.
# `bash run_voc.sh --help` lists the options.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
DATASET=voc
DATA_ROOT=datasets/VOCdevkit/VOC2012
WORK_DIR=""
METHOD=ae_sipe
AFFINITY=irn
TRAIN_SPLIT=train_aug
CAM_SPLIT=train_aug
EVAL_SPLIT=train
source scripts/pipeline.sh
parse_driver_args "$@"
if [ "$TOY" = 1 ]; then
    WORK_DIR="${WORK_DIR:-runs/toy}"
    use_toy_dataset
fi
WORK_DIR="${WORK_DIR:-runs/voc_$METHOD}"
run_pipeline
