# Sourced by run_voc.sh and run_coco.sh: flag parsing and the stage sequence they share.
# Expects DATASET, DATA_ROOT, WORK_DIR, TOY_WORK_DIR, METHOD, AFFINITY, TRAIN_SPLIT, CAM_SPLIT,
# EVAL_SPLIT and SEG_SPLIT to be set; the drivers then call `drive "$@"`.

GPUS="${GPUS:-1}"
NNODES="${NNODES:-1}"
TOY=0
TOY_IMAGES=160
TOY_IMAGE_SIZE=128
STAGE_NAMES=(train_cam make_cam eval_cam make_affinity_labels train_affinity make_seg_labels train_seg infer_seg)
DATA_ROOT_GIVEN=0
declare -A STAGE_ARGS=()

driver_usage() {
    cat <<USAGE
usage: $0 [options]
  --toy                 run on the embedded toy dataset (generated into WORK_DIR/toy_data), CPU settings
  --toy-images N        training images of the toy dataset (default: $TOY_IMAGES)
  --toy-image-size PX   longest side of the toy images (default: $TOY_IMAGE_SIZE)
  --dataset D           $DATASET, or custom: any folder in VOC layout with a class_names.txt (--data-root;
                        its train split is learned from, its val split scores stage 7)
  --data-root DIR       dataset folder (default: $DATA_ROOT)
  --work-dir DIR        run directory (default: runs/<dataset>_<method>, with _<affinity> when not the
                        default one; runs/toy with --toy and the default method and affinity)
  --method M            sipe, ae_sipe or cam: PSA's plain CAM classifier, with --affinity affinitynet
                        PSA's system end to end (default: $METHOD)
  --affinity A          irn, affinitynet (PSA) or none (the CRF labels of stage 4 are the pseudo-labels)
                        (default: $AFFINITY)
  --gpus N              processes per machine for torchrun (default: 1: plain python)
  --nnodes N            machines; with --nnodes > 1 also set RDZV_ENDPOINT=host:port on every machine
  --STAGE "FLAGS"       extra flags for one stage, quoted, e.g. --train-cam "--amp --channels-last";
                        stages: ${STAGE_NAMES[*]//_/-}
A stage whose outputs are complete is skipped; a killed training stage resumes.
USAGE
}

parse_driver_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --toy) TOY=1 ;;
            --toy-images) TOY_IMAGES="$2"; shift ;;
            --toy-image-size) TOY_IMAGE_SIZE="$2"; shift ;;
            --dataset) DATASET="$2"; shift ;;
            --data-root) DATA_ROOT="$2"; DATA_ROOT_GIVEN=1; shift ;;
            --work-dir) WORK_DIR="$2"; shift ;;
            --method) METHOD="$2"; shift ;;
            --affinity) AFFINITY="$2"; shift ;;
            --gpus) GPUS="$2"; shift ;;
            --nnodes) NNODES="$2"; shift ;;
            -h|--help) driver_usage; exit 0 ;;
            --*)
                local name="${1#--}"
                name="${name//-/_}"
                if [[ " ${STAGE_NAMES[*]} " == *" $name "* ]] && [ $# -gt 1 ]; then
                    STAGE_ARGS[$name]="${STAGE_ARGS[$name]:-} $2"
                    shift
                else
                    echo "error: unknown option $1" >&2; driver_usage >&2; exit 2
                fi ;;
            *) echo "error: unknown argument $1" >&2; driver_usage >&2; exit 2 ;;
        esac
        shift
    done
    case "$METHOD" in sipe|ae_sipe|cam) ;; *) echo "error: --method must be sipe, ae_sipe or cam" >&2; exit 2 ;; esac
    case "$AFFINITY" in irn|affinitynet|none) ;; *) echo "error: --affinity must be irn, affinitynet or none" >&2; exit 2 ;; esac
    case "$DATASET" in
        voc|coco) ;;
        custom)
            if [ "$DATA_ROOT_GIVEN" = 0 ] && [ "$TOY" = 0 ]; then
                echo "error: --dataset custom needs --data-root DIR (a folder in VOC layout)" >&2; exit 2
            fi
            TRAIN_SPLIT=train CAM_SPLIT=train EVAL_SPLIT=train SEG_SPLIT=val ;;
        *) echo "error: --dataset must be voc, coco or custom" >&2; exit 2 ;;
    esac
}

# Toy settings for a 2-core CPU: small crops, few steps, no ImageNet weights.
use_toy_dataset() {
    DATASET=custom
    DATA_ROOT="$WORK_DIR/toy_data"
    TRAIN_SPLIT=train
    CAM_SPLIT=train
    EVAL_SPLIT=train
    if [ ! -f "$DATA_ROOT/class_names.txt" ]; then
        python -m data.toy --out "$DATA_ROOT" --num-train "$TOY_IMAGES" --num-val $((TOY_IMAGES / 5)) \
            --image-size "$TOY_IMAGE_SIZE"
    fi
    local cpu="--device cpu --num-workers 1"
    local crop="--crop-size 128 --batch-size 8"
    STAGE_ARGS[train_cam]="--pretrained none $cpu $crop --resize-long 96 160 --epochs 15 --lr 0.02 --momentum 0.9
        --clip-grad 1 --save-every 50 --log-every 10 ${STAGE_ARGS[train_cam]:-}"
    STAGE_ARGS[make_cam]="$cpu ${STAGE_ARGS[make_cam]:-}"
    STAGE_ARGS[eval_cam]="--num-workers 2 ${STAGE_ARGS[eval_cam]:-}"
    STAGE_ARGS[make_affinity_labels]="--workers 2 ${STAGE_ARGS[make_affinity_labels]:-}"
    STAGE_ARGS[train_affinity]="--pretrained $WORK_DIR/ckpt/cam.pth $cpu $crop --epochs 10 --save-every 50
        --log-every 10 ${STAGE_ARGS[train_affinity]:-}"
    STAGE_ARGS[make_seg_labels]="$cpu --crf-workers 2 ${STAGE_ARGS[make_seg_labels]:-}"
    STAGE_ARGS[train_seg]="--pretrained $WORK_DIR/ckpt/cam.pth --arch deeplabv3 --backbone resnet50 $cpu --crop-size 128
        --batch-size 8 --iterations 60 --lr 0.01 --save-every 50 --log-every 10 ${STAGE_ARGS[train_seg]:-}"
    STAGE_ARGS[infer_seg]="$cpu --crf-workers 2 ${STAGE_ARGS[infer_seg]:-}"
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

# The extra flags of one stage as words (all its lines: `read -d ''` reads to the end).
extra() {
    local words=()
    read -r -d '' -a words <<< "${STAGE_ARGS[$1]:-}" || true
    printf '%s\n' "${words[@]}"
}

# Train a network unless its final checkpoint exists; resume from its *_last.pth.
train_stage() {
    local script="$1" name="$2"
    shift 2
    if [ -f "$WORK_DIR/ckpt/$name.pth" ]; then
        echo "== ${script%.py}: $WORK_DIR/ckpt/$name.pth exists, skipped"
        return
    fi
    local resume=()
    [ -f "$WORK_DIR/ckpt/${name}_last.pth" ] && resume=(--resume)
    echo "== ${script%.py}"
    launch "$script" "$@" "${resume[@]}" $(extra "${script%.py}")
}

run_pipeline() {
    local data=(--dataset "$DATASET" --data-root "$DATA_ROOT" --work-dir "$WORK_DIR")
    mkdir -p "$WORK_DIR"
    local evaluate=(python eval_cam.py "${data[@]}" --split "$EVAL_SPLIT" $(extra eval_cam))
    # AE-SIPE's published VOC figure (65.78) is of the checkpoint with the best train mIoU
    local checkpoint_note=()
    [ "$DATASET" = voc ] && checkpoint_note=(--note "final checkpoint; the published 65.78 used best.pth")

    train_stage train_cam.py cam "${data[@]}" --split "$TRAIN_SPLIT" --method "$METHOD"
    echo "== make_cam"
    if [ "$METHOD" = cam ]; then
        # PSA's plain CAM: its files hold the CAM alone, scored with a constant background
        launch make_cam.py "${data[@]}" --split "$CAM_SPLIT" $(extra make_cam)
        echo "== eval_cam"
        "${evaluate[@]}" --map cam --sweep --tag "CAM"
    else
        launch make_cam.py "${data[@]}" --split "$CAM_SPLIT" --all-maps $(extra make_cam)
        echo "== eval_cam"
        "${evaluate[@]}" --map plain_cam --sweep --tag "CAM"
        "${evaluate[@]}" --map is_cam --tag "IS-CAM"
    fi
    if [ "$METHOD" = ae_sipe ]; then
        # the background factor (0.8) comes from the method the CAM files record (tools/methods.py)
        "${evaluate[@]}" --map cam --tag "AE-IS-CAM" "${checkpoint_note[@]}"
    fi

    local mode=() pseudo_labels="$WORK_DIR/pseudo_labels"
    [ "$AFFINITY" = affinitynet ] && mode=(--mode psa)
    echo "== make_affinity_labels"
    launch make_affinity_labels.py "${data[@]}" --split "$CAM_SPLIT" "${mode[@]}" $(extra make_affinity_labels)
    if [ "$AFFINITY" = none ]; then
        # SIPE's COCO route: the CRF labels of stage 4 are the pseudo-labels (255 where unsure)
        "${evaluate[@]}" --label-dir "$WORK_DIR/affinity_labels" --confident --tag "affinity labels (pseudo-labels)"
        pseudo_labels="$WORK_DIR/affinity_labels"
    else
        "${evaluate[@]}" --label-dir "$WORK_DIR/affinity_labels" --confident --tag "affinity labels"
        train_stage train_affinity.py affinity "${data[@]}" --split "$CAM_SPLIT" --arch "$AFFINITY"
        echo "== make_seg_labels"
        launch make_seg_labels.py "${data[@]}" --split "$CAM_SPLIT" --crf $(extra make_seg_labels)
        "${evaluate[@]}" --label-dir "$WORK_DIR/pseudo_labels" --tag "random walk"
        "${evaluate[@]}" --label-dir "$WORK_DIR/pseudo_labels_crf" --tag "random walk + CRF"
    fi

    # stage 7: the segmentation network on the pseudo-labels (255 ignored), scored on SEG_SPLIT
    train_stage train_seg.py seg "${data[@]}" --split "$CAM_SPLIT" --label-dir "$pseudo_labels"
    echo "== infer_seg"
    launch infer_seg.py "${data[@]}" --split "$SEG_SPLIT" --crf $(extra infer_seg)
    "${evaluate[@]}" --split "$SEG_SPLIT" --label-dir "$WORK_DIR/segmentation/$SEG_SPLIT" \
        --tag "segmentation ($SEG_SPLIT)"
    "${evaluate[@]}" --split "$SEG_SPLIT" --label-dir "$WORK_DIR/segmentation_crf/$SEG_SPLIT" \
        --tag "segmentation + CRF ($SEG_SPLIT)"
    echo
    echo "== mIoU of every stage ($EVAL_SPLIT split; stage 7: $SEG_SPLIT), $WORK_DIR/results.md"
    sed -n '1,/^$/p' "$WORK_DIR/results.md"
}

# The drivers' main: options, toy settings, the run directory, every stage.  Each choice of
# method and affinity network has its own default run directory, so that one never resumes
# from another's networks.
drive() {
    local default_method="$METHOD" default_affinity="$AFFINITY"
    parse_driver_args "$@"
    local name="$METHOD"
    if [ "$AFFINITY" != "$default_affinity" ]; then
        name="${METHOD}_$AFFINITY"
    fi
    if [ "$TOY" = 1 ]; then
        if [ "$METHOD" != "$default_method" ] || [ "$AFFINITY" != "$default_affinity" ]; then
            TOY_WORK_DIR="${TOY_WORK_DIR}_$name"
        fi
        WORK_DIR="${WORK_DIR:-$TOY_WORK_DIR}"
        use_toy_dataset
    fi
    WORK_DIR="${WORK_DIR:-runs/${DATASET}_$name}"
    run_pipeline
}
