# Sourced by run_voc.sh and run_coco.sh: flag parsing and the stage sequence they share.
# Expects DATASET, DATA_ROOT, WORK_DIR, METHOD, TRAIN_SPLIT, EVAL_SPLIT to be set.

GPUS="${GPUS:-1}"
NNODES="${NNODES:-1}"
TRAIN_CAM_ARGS=()
MAKE_CAM_ARGS=()
EVAL_CAM_ARGS=()
TOY=0

driver_usage() {
    cat <<USAGE
usage: $0 [options]
  --toy                 run on the embedded toy dataset (generated into WORK_DIR/toy_data), CPU settings
  --data-root DIR       dataset folder (default: $DATA_ROOT)
  --work-dir DIR        run directory (default: $WORK_DIR)
  --method M            sipe or ae_sipe (default: $METHOD)
  --gpus N              processes per machine for torchrun (default: 1: plain python)
  --nnodes N            machines; with --nnodes > 1 also set RDZV_ENDPOINT=host:port on every machine
  --train-cam "FLAGS"   extra flags for train_cam.py (quote them), likewise --make-cam, --eval-cam
USAGE
}

parse_driver_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --toy) TOY=1 ;;
            --data-root) DATA_ROOT="$2"; shift ;;
            --work-dir) WORK_DIR="$2"; shift ;;
            --method) METHOD="$2"; shift ;;
            --gpus) GPUS="$2"; shift ;;
            --nnodes) NNODES="$2"; shift ;;
            --train-cam) read -r -a extra <<< "$2"; TRAIN_CAM_ARGS+=("${extra[@]}"); shift ;;
            --make-cam) read -r -a extra <<< "$2"; MAKE_CAM_ARGS+=("${extra[@]}"); shift ;;
            --eval-cam) read -r -a extra <<< "$2"; EVAL_CAM_ARGS+=("${extra[@]}"); shift ;;
            -h|--help) driver_usage; exit 0 ;;
            *) echo "error: unknown option $1" >&2; driver_usage >&2; exit 2 ;;
        esac
        shift
    done
}

# Toy settings for a 2-core CPU: small crops, few steps, no pretrained weights.
use_toy_dataset() {
    DATASET=custom
    DATA_ROOT="$WORK_DIR/toy_data"
    TRAIN_SPLIT=train
    EVAL_SPLIT=train
    if [ ! -f "$DATA_ROOT/class_names.txt" ]; then
        python -m data.toy --out "$DATA_ROOT" --num-train 160 --num-val 32
    fi
    TRAIN_CAM_ARGS=(--pretrained none --device cpu --num-workers 1 --crop-size 128 --resize-long 96 160
                    --batch-size 8 --epochs 15 --lr 0.02 --momentum 0.9 --save-every 50 --log-every 10
                    "${TRAIN_CAM_ARGS[@]}")
    MAKE_CAM_ARGS=(--device cpu --num-workers 1 "${MAKE_CAM_ARGS[@]}")
    EVAL_CAM_ARGS=(--num-workers 2 "${EVAL_CAM_ARGS[@]}")
}

# python, or torchrun with --gpus processes per machine (and --nnodes machines).
launch() {
    if [ "$GPUS" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
        torchrun --nproc_per_node="$GPUS" --nnodes="$NNODES" \
            ${RDZV_ENDPOINT:+--rdzv_backend=c10d --rdzv_endpoint="$RDZV_ENDPOINT"} "$@"
    else
        python "$@"
    fi
}

bg_scale_for() {
    if [ "$METHOD" = ae_sipe ]; then echo 0.8; else echo 1.0; fi
}

run_localization_stages() {
    local data=(--dataset "$DATASET" --data-root "$DATA_ROOT")
    mkdir -p "$WORK_DIR"
    if [ -f "$WORK_DIR/ckpt/cam.pth" ]; then
        echo "== stage 1 train_cam: $WORK_DIR/ckpt/cam.pth exists, skipped"
    else
        echo "== stage 1 train_cam ($METHOD)"
        local resume=()
        [ -f "$WORK_DIR/ckpt/cam_last.pth" ] && resume=(--resume)
        launch train_cam.py "${data[@]}" --split "$TRAIN_SPLIT" --work-dir "$WORK_DIR" --method "$METHOD" \
            "${resume[@]}" "${TRAIN_CAM_ARGS[@]}"
    fi
    echo "== stage 2 make_cam"
    launch make_cam.py "${data[@]}" --split "$EVAL_SPLIT" --work-dir "$WORK_DIR" --all-maps "${MAKE_CAM_ARGS[@]}"
    echo "== stage 3 eval_cam"
    local eval=(python eval_cam.py "${data[@]}" --split "$EVAL_SPLIT" --work-dir "$WORK_DIR" "${EVAL_CAM_ARGS[@]}")
    "${eval[@]}" --map plain_cam --sweep --tag "CAM"
    "${eval[@]}" --map is_cam --tag "IS-CAM"
    if [ "$METHOD" = ae_sipe ]; then
        "${eval[@]}" --map cam --bg-scale "$(bg_scale_for)" --tag "AE-IS-CAM"
    fi
    echo
    echo "== mIoU ladder ($EVAL_SPLIT split), $WORK_DIR/results.md"
    sed -n '1,/^$/p' "$WORK_DIR/results.md"
}
