"""The run's results table: ``results.json`` and ``results.md`` (docs/method.md §2, §7)."""
import json
import math
from pathlib import Path

import numpy as np

from tools.io import PipelineError, write_json, write_text
from tools.metrics import iou, precision_recall


def summarize(confusion, class_names):
    """A results entry: per-class IoU, precision, recall and their means, in percent."""
    per_class, miou = iou(confusion)
    precision, recall = precision_recall(confusion)

    def percent(values):
        return {name: None if math.isnan(v) else round(100 * v, 2) for name, v in zip(class_names, values)}

    return {"miou": round(100 * miou, 2),
            "precision": round(100 * float(np.nanmean(precision)), 2),
            "recall": round(100 * float(np.nanmean(recall)), 2),
            "iou": percent(per_class), "class_precision": percent(precision), "class_recall": percent(recall),
            "pixels": int(confusion.sum())}


def load_results(work_dir):
    path = Path(work_dir) / "results.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})") from exc


def update_results(work_dir, tag, entry):
    """Store ``entry`` under ``tag`` in results.json and rewrite results.md from all entries."""
    results = load_results(work_dir)
    results[tag] = entry
    write_json(Path(work_dir) / "results.json", results)
    write_text(Path(work_dir) / "results.md", markdown(results))
    return results


def share_of(work_dir, tag, miou):
    """``miou`` as a percentage of the mIoU of the row ``tag`` of the run's results, as a note."""
    reference = load_results(work_dir).get(tag, {}).get("miou")
    if not reference:
        raise PipelineError(f"{Path(work_dir) / 'results.json'}: no scored row {tag!r} to give a share of")
    return f"{100 * miou / reference:.1f} % of {tag}"


def markdown(results):
    """The ladder (one row per evaluated map or label set, with the checkpoints that made
    it) and the per-class IoU table."""
    lines = ["| stage | mIoU | precision | recall | note | made by |", "| --- | ---: | ---: | ---: | --- | --- |"]
    for tag, entry in results.items():
        made_by = ", ".join(entry["made_by"]) if entry.get("made_by") else "unrecorded"
        scores = [f"{entry[key]:.2f}" if entry.get(key) is not None else "-" for key in ("miou", "precision", "recall")]
        lines.append(f"| {tag} | {' | '.join(scores)} | {entry.get('note', '')} | {made_by} |")
    scored = {tag: entry for tag, entry in results.items() if entry.get("iou")}  # rows without masks have none
    if scored:
        names = list(next(iter(scored.values()))["iou"])
        lines += ["", "| class | " + " | ".join(scored) + " |", "| --- |" + " ---: |" * len(scored)]
        for name in names:
            cells = [entry["iou"].get(name) for entry in scored.values()]
            lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"
