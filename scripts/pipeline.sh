# Sourced by run_voc.sh and run_coco.sh: flag parsing and the stage sequence they share.
# Expects DATASET, DATA_ROOT, WORK_DIR, TOY_WORK_DIR, METHOD, AFFINITY, TRAIN_SPLIT, CAM_SPLIT,
# EVAL_SPLIT and SEG_SPLIT to be set; the drivers then call `drive "$@"`.

GPUS="${GPUS:-1}"
NNODES="${NNODES:-1}"
TOY=0
TOY_IMAGES=160
TOY_IMAGE_SIZE=320
FULLY_SUPERVISED=0
STAGE_NAMES=(train_cam make_cam eval_cam make_affinity_labels train_affinity make_seg_labels train_seg infer_seg)
DATA_ROOT_GIVEN=0
OVERWRITE_FROM=""
BACKBONE=""
declare -A STAGE_ARGS=()       # a stage's extra flags, split into words at white space
declare -A STAGE_PATH_ARGS=()  # a stage's extra flags, one word a line: paths may hold spaces

driver_usage() {
    cat <<USAGE
usage: $0 [options]
  --toy                 a VOC run in miniature on the embedded toy dataset (generated into WORK_DIR/toy_data)
                        from EfficientNet-Lite0's ImageNet weights, CPU sizes
  --toy-images N        training images of the toy dataset, at least 5 (its val split has N/5)
                        (default: $TOY_IMAGES); a run directory keeps the toy settings it began with
  --toy-image-size PX   longest side of the toy images, at least 16 (default: $TOY_IMAGE_SIZE)
  --dataset D           $DATASET, or custom: a folder of JPEGImages/ and class_names.txt with labels.csv
                        (image,labels[,split]) or VOC-layout lists and XML (--data-root; its train split is
                        learned from, its val split scores stage 7; masks, where some images have them, score)
  --data-root DIR       dataset folder (default: $DATA_ROOT)
  --work-dir DIR        run directory (default: runs/<dataset>_<method>, with _<affinity> when not the
                        default one and _<backbone> when given; runs/toy with --toy and the default method
                        and affinity)
  --method M            sipe, ae_sipe or cam: PSA's plain CAM classifier, with --affinity affinitynet
                        PSA's system end to end (default: $METHOD)
  --affinity A          irn, affinitynet (PSA) or none (the CRF labels of stage 4 are the pseudo-labels)
                        (default: $AFFINITY)
  --fully-supervised    also train the segmentation network on the ground-truth masks of the training images
                        (same recipe and budget, in WORK_DIR/fully_supervised): its rows read stage 7
                        against the fully supervised network (every training image needs a mask)
  --backbone B          the backbone of train_cam and train_affinity (default: their recipe's); resnet38 or
                        vgg16 (PSA's) with --method cam --affinity affinitynet; not with --toy
  --gpus N              processes per machine for torchrun (default: 1: plain python)
  --nnodes N            machines; with --nnodes > 1 also set RDZV_ENDPOINT=host:port on every machine
  --STAGE "FLAGS"       extra flags for one stage, quoted, e.g. --train-cam "--amp --channels-last";
                        stages: ${STAGE_NAMES[*]//_/-}
  --overwrite-from STAGE  make the outputs of STAGE and of every later stage again (--overwrite),
                        e.g. after a change to the flags of STAGE
A stage whose outputs were made from the same inputs and flags is skipped, a killed one resumes;
outputs made otherwise stop the run with a line that says what differs (pass --overwrite-from).
USAGE
}

# The drivers' one-line error, exit status 2.
die() {
    echo "error: $*" >&2
    exit 2
}

# need_int FLAG VALUE MIN: VALUE must be a whole number >= MIN.
need_int() {
    [[ "$2" =~ ^(0|[1-9][0-9]{0,8})$ ]] && [ "$2" -ge "$3" ] || die "$1 must be an integer >= $3, not '$2'"
}

# need_dir PATH: PATH must be a folder, or a path where one can be made (no file on the way).
need_dir() {
    local path="$1"
    while [ ! -e "$path" ] && [ "$path" != "$(dirname "$path")" ]; do
        path="$(dirname "$path")"
    done
    [ -d "$path" ] || die "$path: not a directory"
}

# The stage of a --STAGE option (train_cam for --train-cam), or nothing.
stage_of() {
    local name="${1#--}"
    name="${name//-/_}"
    if [[ " ${STAGE_NAMES[*]} " == *" $name "* ]]; then echo "$name"; fi
}

parse_driver_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --toy) TOY=1; shift; continue ;;
            --fully-supervised) FULLY_SUPERVISED=1; shift; continue ;;
            -h|--help) driver_usage; exit 0 ;;
            --toy-images|--toy-image-size|--dataset|--data-root|--work-dir|--method|--affinity|--backbone|--gpus|--nnodes) ;;
            --overwrite-from) ;;
            --*) if [ -z "$(stage_of "$1")" ]; then
                     echo "error: unknown option $1" >&2; driver_usage >&2; exit 2
                 fi ;;
            *) echo "error: unknown argument $1" >&2; driver_usage >&2; exit 2 ;;
        esac
        [ $# -gt 1 ] || die "$1 needs a value"
        case "$1" in
            --toy-images) TOY_IMAGES="$2" ;;
            --toy-image-size) TOY_IMAGE_SIZE="$2" ;;
            --dataset) DATASET="$2" ;;
            --data-root) DATA_ROOT="$2"; DATA_ROOT_GIVEN=1 ;;
            --work-dir) WORK_DIR="$2" ;;
            --method) METHOD="$2" ;;
            --affinity) AFFINITY="$2" ;;
            --backbone) BACKBONE="$2" ;;
            --gpus) GPUS="$2" ;;
            --nnodes) NNODES="$2" ;;
            --overwrite-from) OVERWRITE_FROM="$(stage_of "--$2")"
                              [ -n "$OVERWRITE_FROM" ] || die "--overwrite-from must be a stage: ${STAGE_NAMES[*]//_/-}" ;;
            *) local name; name="$(stage_of "$1")"; STAGE_ARGS[$name]="${STAGE_ARGS[$name]:-} $2" ;;
        esac
        shift 2
    done
    # the toy dataset's val split holds a fifth of its images: at least one
    need_int --toy-images "$TOY_IMAGES" 5
    need_int --toy-image-size "$TOY_IMAGE_SIZE" 16
    if [ -n "$BACKBONE" ]; then
        [ "$TOY" = 0 ] || die "--backbone: not with --toy (the toy recipe's backbone is efficientnet_lite0)"
        STAGE_ARGS[train_cam]="--backbone $BACKBONE ${STAGE_ARGS[train_cam]:-}"
        STAGE_ARGS[train_affinity]="--backbone $BACKBONE ${STAGE_ARGS[train_affinity]:-}"
    fi
    need_int --gpus "$GPUS" 1
    need_int --nnodes "$NNODES" 1
    # the choices are the recipe table's (tools/recipes.py), as the stages' own flags are
    python -m tools.recipes train_cam --flag=--method --value="$METHOD" || exit 2
    python -m tools.recipes train_affinity --flag=--affinity --value="$AFFINITY" --or none || exit 2
    case "$DATASET" in
        voc|coco) ;;
        custom)
            if [ "$DATA_ROOT_GIVEN" = 0 ] && [ "$TOY" = 0 ]; then
                die "--dataset custom needs --data-root DIR (a folder in VOC layout)"
            fi
            TRAIN_SPLIT=train CAM_SPLIT=train EVAL_SPLIT=train SEG_SPLIT=val ;;
        *) die "--dataset must be voc, coco or custom" ;;
    esac
}

# The toy run: a VOC run in miniature on a 2-core CPU (docs/toy.md): every stage takes
# --recipe toy (tools/recipes.py: the published recipe at CPU sizes, EfficientNet-Lite0 with
# the ImageNet weights of its registry package).  The toy dataset is made once per run directory; data.toy
# refuses one made with other settings.
use_toy_dataset() {
    DATASET=custom
    DATA_ROOT="$WORK_DIR/toy_data"
    TRAIN_SPLIT=train
    CAM_SPLIT=train
    EVAL_SPLIT=train
    python -m data.toy --out "$DATA_ROOT" --num-train "$TOY_IMAGES" --num-val $((TOY_IMAGES / 5)) \
        --image-size "$TOY_IMAGE_SIZE" --style fade --extent 0.35 0.8
    local name
    for name in "${STAGE_NAMES[@]}"; do
        STAGE_ARGS[$name]="--recipe toy ${STAGE_ARGS[$name]:-}"
    done
}

# --overwrite for the stage --overwrite-from names and for every later one.
overwrite_from() {
    [ -n "$OVERWRITE_FROM" ] || return 0
    local name
    for name in "${STAGE_NAMES[@]}"; do
        [ "$name" = "$OVERWRITE_FROM" ] && OVERWRITING=1
        if [ "${OVERWRITING:-0}" = 1 ] && [ "$name" != eval_cam ]; then
            STAGE_ARGS[$name]="${STAGE_ARGS[$name]:-} --overwrite"
        fi
    done
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

# extra STAGE ARRAY: the extra flags of STAGE into the array named ARRAY: its path words
# (STAGE_PATH_ARGS, one a line, kept whole), then its other words (STAGE_ARGS, split at
# white space over all its lines: `read -d ''` reads to the end).
extra() {
    local -n into="$2"
    local words=()
    into=()
    if [ -n "${STAGE_PATH_ARGS[$1]:-}" ]; then
        mapfile -t into <<< "${STAGE_PATH_ARGS[$1]}"
    fi
    read -r -d '' -a words <<< "${STAGE_ARGS[$1]:-}" || true
    into+=("${words[@]}")
}

# train_stage SCRIPT NAME DIR ARGS...: train a network in the run directory DIR, resuming from
# its *_last.pth; the stage itself leaves a network made from the same inputs and flags as it
# is, and stops at one made otherwise (tools/provenance.py).
train_stage() {
    local script="$1" name="$2" dir="$3"
    shift 3
    local resume=() more
    [ -f "$dir/ckpt/${name}_last.pth" ] && resume=(--resume)
    extra "${script%.py}" more
    echo "== ${script%.py}"
    launch "$script" --work-dir "$dir" "$@" "${resume[@]}" "${more[@]}"
}

run_pipeline() {
    local source=(--dataset "$DATASET" --data-root "$DATA_ROOT")
    local data=("${source[@]}" --work-dir "$WORK_DIR")
    mkdir -p "$WORK_DIR"
    local more
    extra eval_cam more
    local evaluate=(python eval_cam.py "${data[@]}" --split "$EVAL_SPLIT" "${more[@]}")
    # AE-SIPE's published VOC figure (65.78) is of the checkpoint with the best train mIoU
    local checkpoint_note=()
    [ "$DATASET" = voc ] && checkpoint_note=(--note "final checkpoint; the published 65.78 used best.pth")

    train_stage train_cam.py cam "$WORK_DIR" "${source[@]}" --split "$TRAIN_SPLIT" --method "$METHOD"
    echo "== make_cam"
    extra make_cam more
    # the CAM row: the classifier's CAM with a constant background (a plain CAM classifier's
    # files hold it alone, as their final map)
    local all_maps=(--all-maps)
    [ "$METHOD" = cam ] && all_maps=()
    launch make_cam.py "${data[@]}" --split "$CAM_SPLIT" "${all_maps[@]}" "${more[@]}"
    echo "== eval_cam"
    "${evaluate[@]}" --map plain_cam --sweep --tag "CAM"
    if [ "$METHOD" != cam ]; then
        "${evaluate[@]}" --map is_cam --tag "IS-CAM"
    fi
    if [ "$METHOD" = ae_sipe ]; then
        # the background factor (0.8) comes from the method the CAM files record (tools/methods.py)
        "${evaluate[@]}" --map cam --tag "AE-IS-CAM" "${checkpoint_note[@]}"
    fi

    local mode=() pseudo_labels="$WORK_DIR/pseudo_labels"
    [ "$AFFINITY" = affinitynet ] && mode=(--mode psa)
    echo "== make_affinity_labels"
    extra make_affinity_labels more
    launch make_affinity_labels.py "${data[@]}" --split "$CAM_SPLIT" "${mode[@]}" "${more[@]}"
    if [ "$AFFINITY" = none ]; then
        # SIPE's COCO route: the CRF labels of stage 4 are the pseudo-labels (255 where unsure)
        "${evaluate[@]}" --label-dir "$WORK_DIR/affinity_labels" --confident --tag "affinity labels (pseudo-labels)"
        pseudo_labels="$WORK_DIR/affinity_labels"
    else
        "${evaluate[@]}" --label-dir "$WORK_DIR/affinity_labels" --confident --tag "affinity labels"
        train_stage train_affinity.py affinity "$WORK_DIR" "${source[@]}" --split "$CAM_SPLIT" --arch "$AFFINITY"
        echo "== make_seg_labels"
        extra make_seg_labels more
        launch make_seg_labels.py "${data[@]}" --split "$CAM_SPLIT" --crf "${more[@]}"
        "${evaluate[@]}" --label-dir "$WORK_DIR/pseudo_labels" --tag "random walk"
        "${evaluate[@]}" --label-dir "$WORK_DIR/pseudo_labels_crf" --tag "random walk + CRF"
    fi

    # stage 7: the segmentation network on the pseudo-labels (255 ignored), scored on SEG_SPLIT,
    # and with --fully-supervised the same network on the ground truth, in a run directory of its own
    local scored=1
    if [ "$DATASET" = custom ] && ! python -m data.sources --dataset custom --data-root "$DATA_ROOT" \
            --has-split "$SEG_SPLIT"; then
        scored=0
    fi
    if [ "$FULLY_SUPERVISED" = 1 ]; then
        local reference="$WORK_DIR/fully_supervised"
        train_stage train_seg.py seg "$reference" "${source[@]}" --split "$CAM_SPLIT" --ground-truth
        [ "$scored" = 0 ] || segment "$reference" "fully supervised"
    fi
    train_stage train_seg.py seg "$WORK_DIR" "${source[@]}" --split "$CAM_SPLIT" --label-dir "$pseudo_labels"
    if [ "$scored" = 0 ]; then
        echo "== infer_seg: $DATA_ROOT lists no $SEG_SPLIT split; the segmentation network is trained, not scored"
    else
        segment "$WORK_DIR" "segmentation"
    fi
    echo "== ladder figure"
    python ladder_figure.py "${source[@]}" --work-dir "$WORK_DIR" --split "$CAM_SPLIT" --seg-split "$SEG_SPLIT"
    echo
    echo "== mIoU of every stage ($EVAL_SPLIT split; stage 7: $SEG_SPLIT), $WORK_DIR/results.md"
    sed -n '1,/^$/p' "$WORK_DIR/results.md"
}

# segment DIR NAME: stage 7's predictions of the network in run directory DIR on SEG_SPLIT, with
# and without CRF, scored into the run's results as "NAME (split)"; the segmentation rows as a
# share of the fully supervised ones when those were made.  Called from run_pipeline, whose
# `source` and `evaluate` arrays it uses.
segment() {
    local dir="$1" name="$2" more share=() share_crf=()
    echo "== infer_seg ($name)"
    extra infer_seg more
    launch infer_seg.py "${source[@]}" --work-dir "$dir" --split "$SEG_SPLIT" --crf "${more[@]}"
    if [ "$FULLY_SUPERVISED" = 1 ] && [ "$dir" = "$WORK_DIR" ]; then
        share=(--share-of "fully supervised ($SEG_SPLIT)")
        share_crf=(--share-of "fully supervised + CRF ($SEG_SPLIT)")
    fi
    "${evaluate[@]}" --split "$SEG_SPLIT" --label-dir "$dir/segmentation/$SEG_SPLIT" --tag "$name ($SEG_SPLIT)" \
        "${share[@]}"
    "${evaluate[@]}" --split "$SEG_SPLIT" --label-dir "$dir/segmentation_crf/$SEG_SPLIT" \
        --tag "$name + CRF ($SEG_SPLIT)" "${share_crf[@]}"
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
    if [ -n "$BACKBONE" ]; then
        name="${name}_$BACKBONE"
    fi
    if [ "$TOY" = 1 ]; then
        if [ "$METHOD" != "$default_method" ] || [ "$AFFINITY" != "$default_affinity" ]; then
            TOY_WORK_DIR="${TOY_WORK_DIR}_$name"
        fi
        WORK_DIR="${WORK_DIR:-$TOY_WORK_DIR}"
    fi
    WORK_DIR="${WORK_DIR:-runs/${DATASET}_$name}"
    need_dir "$WORK_DIR"
    if [ "$TOY" = 1 ]; then
        use_toy_dataset
    fi
    overwrite_from
    run_pipeline
}
