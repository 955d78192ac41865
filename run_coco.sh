#!/usr/bin/env bash
# The whole pipeline on COCO 2014. The defaults are the published SIPE COCO route: SIPE, and
# no affinity network ("due to the large computation cost"): the pseudo-labels are the CRF
# labels of stage 4, 255 where unsure (--affinity irn adds IRN, --method ae_sipe AE-SIPE).
# `bash run_coco.sh --help` lists the options.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
DATASET=coco
DATA_ROOT=datasets/coco2014
WORK_DIR=""
TOY_WORK_DIR=runs/toy_coco
METHOD=sipe
AFFINITY=none
TRAIN_SPLIT=train
CAM_SPLIT=train
EVAL_SPLIT=train
SEG_SPLIT=val
source scripts/pipeline.sh
drive "$@"
