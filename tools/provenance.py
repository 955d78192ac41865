"""What made an output (docs/method.md §2): a record of a stage's inputs (the digests of the checkpoints
and of the upstream folders' records it read, and of the data: the class list, the split's
image labels and image files) and of the flags that change what it writes.

Each inference stage keeps its record as ``made_by.json`` in every output folder (and its
digest in every CAM file); each training stage keeps it in its checkpoints.  Two records
are the same output when their digests are equal: where they differ, the outputs of one
must not be taken for those of the other.
"""
import hashlib
import json
import os
from pathlib import Path

from tools.io import PipelineError, write_json

RECORD_NAME = "made_by.json"
DATA_INPUTS = ("class_names", "labels", "images")  # the names of the data in a record's inputs

# Flags that never change what a stage writes: where things are, how fast it runs, what it
# logs or shows, how it resumes.  Paths of inputs enter a record as digests instead.
RUNTIME_FLAGS = frozenset({
    "work_dir", "data_root", "out_dir", "cam_dir", "label_dir", "checkpoint", "pretrained", "device",
    "num_workers", "score_workers", "crf_workers", "write_workers", "channels_last", "visualize", "crf", "split",
    "overwrite", "resume", "stop_at_step", "save_every", "log_every", "tag", "note",
})


def file_digest(path):
    """The first 16 hex digits of the SHA-256 of a file's bytes."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def digest(obj):
    """The first 16 hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings(args, keep=()):
    """The flags of ``args`` that shape a stage's output: all but the runtime ones, plus those
    of ``keep`` even when runtime elsewhere; JSON-normal (tuples as lists)."""
    chosen = {k: v for k, v in vars(args).items() if k in keep or k not in RUNTIME_FLAGS}
    return json.loads(json.dumps(chosen, sort_keys=True, default=str))


def checkpoint_input(path, checkpoint):
    """What a record holds of a checkpoint it read: its digest (the input) and, for people,
    its name, step and digest (the record's ``checkpoints``)."""
    sha = file_digest(path)
    step = checkpoint.get("step")
    return sha, f"{Path(path).name}{'' if step is None else f' step {step}'} {sha[:8]}"


def weights_input(value):
    """What a record holds of a ``--pretrained`` value: (the input, the checkpoints behind
    it): a name (imagenet, none) as it is, a file by its digest."""
    if value in ("imagenet", "none") or not Path(value).is_file():
        return value, []
    sha = file_digest(value)
    return sha, [f"{Path(value).name} {sha[:8]}"]


class ImageDigests:
    """The ``file_digest`` of image files, kept in a JSON file by path with the file's size
    and modification time: a file is read again only when one of them changed, so that the
    stages of a run hash the images of a split once, not once a stage."""

    def __init__(self, path):
        self.path = Path(path)
        self.known, self.changed = {}, False
        try:
            self.known = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass  # none yet, or unreadable: made again
        if not isinstance(self.known, dict):
            self.known = {}

    def of(self, path):
        """The digest of the file ``path`` (a PipelineError naming it when it cannot be read)."""
        try:
            stat = os.stat(path)
            key, stamp = str(Path(path).resolve()), [stat.st_size, stat.st_mtime_ns]
            known = self.known.get(key)
            if not (isinstance(known, list) and known[:2] == stamp):
                self.known[key], self.changed = [*stamp, file_digest(path)], True
            return self.known[key][2]
        except OSError as exc:
            raise PipelineError(f"{path}: cannot read the image ({exc.strerror or exc})") from exc

    def save(self):
        """Keep the digests for the next stage; a cache that cannot be written (a full disk) is
        no error: the next stage hashes again.  Returns the error's message, or None."""
        if self.changed:
            try:
                write_json(self.path, self.known)
            except PipelineError as exc:
                return str(exc)
            self.changed = False
        return None


def data_inputs(source, split, image_digests, labels=True):
    """What a record holds of the data a stage read (``DATA_INPUTS``): the digests of the
    class list, of the image labels of ``split`` (with ``labels``) and of its image files'
    contents (``image_digests``: an ImageDigests)."""
    ids = source.ids(split)
    inputs = {"class_names": digest(list(source.class_names))}
    if labels:
        inputs["labels"] = digest({image_id: source.labels(image_id).tolist() for image_id in ids})
    inputs["images"] = digest({image_id: image_digests.of(source.image_path(image_id)) for image_id in ids})
    return inputs


def changed_data(record, current):
    """The data inputs (``DATA_INPUTS``) of ``record`` that differ from ``current`` (the
    ``data_inputs`` of its split now), as ``inputs.images`` ...; a record of no data gives none."""
    made = record.get("inputs", {})
    return [f"inputs.{key}" for key in DATA_INPUTS if key in made and key in current and made[key] != current[key]]


def make_record(stage, inputs, flags, checkpoints=(), data_split=None):
    """The record of a stage's output: ``inputs`` (name -> digest), ``flags`` (``settings``),
    ``checkpoints``, the networks behind it (descriptions for results.md), and the split
    whose data the inputs hold (``data_split``), for a later stage to check them against."""
    body = {"stage": stage, "inputs": inputs, "settings": flags}
    by_digest = {}  # one description per checkpoint (they end in its digest), the fullest
    for described in checkpoints:
        key = described.split()[-1]
        if len(described) > len(by_digest.get(key, "")):
            by_digest[key] = described
    record = {"digest": digest(body), **body, "checkpoints": list(by_digest.values())}
    if data_split is not None:
        record["data_split"] = data_split
    return record


def read_record(folder):
    """The record of ``folder``, or None when it has none."""
    path = Path(folder) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: not a provenance record ({exc})") from exc
    if not isinstance(record, dict) or "digest" not in record:
        raise PipelineError(f"{path}: not a provenance record (no digest)")
    return record


def folder_input(folder, what):
    """What a record holds of an upstream folder it read: (the input, the checkpoints behind
    it, the folder's record digest or None).  A folder that records nothing (outputs made
    elsewhere) enters as its path, so that the stage still runs on it."""
    record = read_record(folder)
    if record is None:
        return f"unrecorded {what} in {Path(folder).resolve()}", [], None
    return record["digest"], record.get("checkpoints", []), record["digest"]


def differences(old, new):
    """What differs between two records, as ``inputs.checkpoint`` or ``settings.lr: 0.1 -> 0.2``
    (at most four, then a count)."""
    found = []
    for part in ("stage", "inputs", "settings"):
        a, b = old.get(part), new.get(part)
        if not isinstance(a, dict) or not isinstance(b, dict):
            if a != b:
                found.append(f"{part}: {a} -> {b}")
            continue
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                found.append(f"{part}.{key}" if part == "inputs" else f"{part}.{key}: {a.get(key)} -> {b.get(key)}")
    if len(found) > 4:
        found = found[:4] + [f"{len(found) - 4} more"]
    return ", ".join(found) or "nothing recorded (another version of the pipeline?)"


def output_files(folder, suffix):
    """The ``*<suffix>`` outputs of ``folder`` (not the hidden temporaries of tools.io.atomic_path)."""
    return (path for path in Path(folder).glob(f"*{suffix}") if not path.name.startswith("."))


def outputs_to_remove(folder, record, suffix, overwrite):
    """Whether the ``*<suffix>`` outputs of ``folder`` must go before this run writes (True
    with ``overwrite``); outputs that another record made, or that record nothing, are a
    PipelineError saying so (a run never adds to, or skips over, another run's outputs)."""
    has_outputs = any(output_files(folder, suffix))
    if overwrite or not has_outputs:
        return has_outputs
    old = read_record(folder)
    hint = "pass --overwrite to make them again, or use another --out-dir"
    if old is None:
        raise PipelineError(f"{folder}: holds {suffix} files that record nothing of what made them; {hint}")
    if old["digest"] != record["digest"]:
        raise PipelineError(f"{folder}: its files were made by another network, other data or other flags "
                            f"(differs in {differences(old, record)}); {hint}")
    return False
