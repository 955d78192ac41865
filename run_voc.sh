#!/usr/bin/env bash
# The whole pipeline on PASCAL VOC 2012, or on the embedded toy dataset with --toy:
# classifier, CAMs, affinity labels, affinity network, pseudo-labels, segmentation network, and
# the mIoU of each.
# `bash run_voc.sh --help` lists the options.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
DATASET=voc
DATA_ROOT=datasets/VOCdevkit/VOC2012
WORK_DIR=""
TOY_WORK_DIR=runs/toy
METHOD=ae_sipe
AFFINITY=irn
TRAIN_SPLIT=train_aug
CAM_SPLIT=train_aug
EVAL_SPLIT=train
SEG_SPLIT=val
source scripts/pipeline.sh
drive "$@"
