"""The `evaluate` job: top-1 accuracy of a trained model.keras on a class-per-folder tree, by default only on the
images `train` held out of it (its split.json)."""

import json
import sys
from pathlib import Path

from tinytl_tf import data
from tinytl_tf.cliargs import SPLIT_FILE
from tinytl_tf.jobs.train import file_sha256
from tinytl_tf.train import accuracy, load_trained


def evaluate_job(model_path, data_dir, batch_size=32, all_images=False):
    """The accuracy of the model at `model_path` on `data_dir` as a dict (accuracy, examples, skipped_images, model,
    data, held_out_only); a note on stderr says which images are scored."""
    model = load_trained(model_path)
    cfg = model.net_config
    only = None if all_images else held_out_files(model_path, data_dir)
    if only is not None:
        print(
            f"evaluate: scoring the {len(only)} images train held out of {data_dir} "
            f"({Path(model_path).parent / SPLIT_FILE}); --all-images scores every image",
            file=sys.stderr,
        )
    images = data.load_eval_folder(
        data_dir, cfg.resolution, cfg.input_mean, cfg.input_std, batch_size, class_names=cfg.labels, only=only
    )
    return {
        "accuracy": accuracy(model, images.test),
        "examples": images.num_test,
        "skipped_images": images.skipped,
        "model": str(model_path),
        "data": str(data_dir),
        "held_out_only": only is not None,
    }


def held_out_files(model_path, data):
    """The relative paths `train` held out of `data` for the model at `model_path` (its split.json), or None
    when the model was not trained on a split of this folder."""
    path = Path(model_path).parent / SPLIT_FILE
    try:
        split = json.loads(path.read_text())
        recorded, files = Path(split["data"]), split["test"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if recorded != Path(data).resolve() or not isinstance(files, list):
        return None
    if "model_sha256" in split and split["model_sha256"] != file_sha256(model_path):  # older splits name no model
        raise ValueError(
            f"{path} belongs to another model than {model_path} (a train run stopped between the two "
            "writes); train again, or pass --all-images to score every image"
        )
    return files
