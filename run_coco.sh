#!/usr/bin/env bash
# The whole pipeline on COCO 2014. As SIPE does for COCO, the pseudo-labels default to the
# CAMs refined by the CRF, without an affinity network (--affinity irn adds one).
# `bash run_coco.sh --help` lists the options.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
DATASET=coco
DATA_ROOT=datasets/coco2014
WORK_DIR=""
TOY_WORK_DIR=runs/toy_coco
METHOD=ae_sipe
AFFINITY=none
TRAIN_SPLIT=train
CAM_SPLIT=train
EVAL_SPLIT=train
source scripts/pipeline.sh
drive "$@"
