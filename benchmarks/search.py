"""Feature-extractor adaptation vs the fixed backbone at the same training-memory budget.

    python -m benchmarks.search --data DIR --budget-mb 2.0 [--backbone mcunet-5fps]
        [--resolutions 96 112 128 144 160] [--search-epochs 5 --pairs 500 --population 100 --generations 100]
        [--epochs 3 --batch-size 8 --lr 3e-3] [--no-measure] [--work runs/bench_search] [--out docs/search.json]

1. `search` on the training images (super-net fine-tuning on 80%, sub-nets measured on the other 20%, predictor,
   evolution under the budget), then `train --subnet`: the searched sub-net fine-tuned with TinyTL-L+B on the
   whole training split.
2. The fixed pretrained backbone with TinyTL-L+B at the largest of the same resolutions that fits the budget.
Both report test accuracy, analytic training memory (TinyTL-L+B, batch 1) and, unless --no-measure, the LiteRT
figures of the exported model (`tinytl_tf.memory.measure`); plus the predictor's rank correlation on unseen
pairs. Every phase resumes from --work. Prepare the data first (SOURCE holds the Caltech-101 tar files):
`python -m tinytl_tf caltech prepare SOURCE DIR`.
"""

import argparse
import functools
import json
import time
from pathlib import Path

from benchmarks.transfer import portable_path


def fixed_backbone_resolution(backbone, num_classes, resolutions, budget_mb):
    """The largest of `resolutions` at which the backbone's TinyTL-L+B memory (batch 1) fits the budget."""
    from tinytl_tf.memory import training_memory
    from tinytl_tf.methods import method_config

    fitting = [
        r
        for r in resolutions
        if training_memory(method_config(backbone, "tinytl-lb", num_classes, resolution=r)).total_mb <= budget_mb
    ]
    if not fitting:
        raise ValueError(
            f"the fixed {backbone} fits {budget_mb} MB at none of {list(resolutions)} px; raise the "
            f"budget or add smaller resolutions"
        )
    return max(fitting)


def trained(run, data, train, model_dir, **kwargs):
    """`train_job` into `model_dir`, or its metrics when that run already finished."""
    metrics = Path(model_dir) / "metrics.json"
    if metrics.exists():
        from tinytl_tf.train import load_trained

        return load_trained(Path(model_dir) / "model.keras"), json.loads(metrics.read_text())
    return train(data, out=model_dir, verbose=run.verbose, **kwargs)


def result_row(model, metrics, measure):
    from tinytl_tf.memory import training_memory

    cfg = model.net_config
    row = {
        "test_accuracy": metrics["test_accuracy"],
        "resolution": cfg.resolution,
        "blocks": len(cfg.blocks),
        "analytic_memory_mb": training_memory(cfg).total_mb,
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "train_seconds": metrics["train_seconds"],
    }
    if measure:
        from tinytl_tf.memory.measure import measure_model

        row["measured"] = measure_model(model)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="DIR/train/<class>/ + DIR/test/<class>/")
    p.add_argument("--backbone", default="mcunet-5fps")
    p.add_argument("--budget-mb", type=float, required=True, help="analytic TinyTL-L+B training memory at batch 1")
    p.add_argument("--resolutions", type=int, nargs="+", default=[96, 112, 128, 144, 160])
    p.add_argument("--search-epochs", type=int, default=5, help="super-net fine-tuning epochs")
    p.add_argument("--pairs", type=int, default=500)
    p.add_argument("--population", type=int, default=100)
    p.add_argument("--generations", type=int, default=100)
    p.add_argument("--predictor-epochs", type=int, default=200)
    p.add_argument("--epochs", type=int, default=3, help="TinyTL-L+B epochs of both final models")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (super-net and both final models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-measure", action="store_true", help="skip the LiteRT memory measurement of both models")
    p.add_argument("--work", default="runs/bench_search", help="folder for the search and both runs (resumable)")
    p.add_argument("--out", default="docs/search.json")
    p.add_argument("--quiet", dest="verbose", action="store_const", const=0, default=1)
    run = p.parse_args(argv)

    from tinytl_tf.atomic import atomic_write
    from tinytl_tf.data import load_image_folder
    from tinytl_tf.jobs.train import train_job
    from tinytl_tf.supernet.search import load_subnet, search_job

    work = Path(run.work)
    start = time.time()
    subnet = search_job(
        run.data,
        run.backbone,
        run.budget_mb,
        work / "search",
        run.resolutions,
        run.search_epochs,
        run.pairs,
        run.population,
        run.generations,
        run.seed,
        run.batch_size,
        run.lr,
        predictor_epochs=run.predictor_epochs,
        verbose=run.verbose,
    )
    search_seconds = time.time() - start

    def load_data(resolution, mean, std, batch_size):
        return load_image_folder(run.data, resolution, mean, std, batch_size, seed=run.seed)

    train = functools.partial(
        train_job,
        backbone=run.backbone,
        method="tinytl-lb",
        epochs=run.epochs,
        batch_size=run.batch_size,
        lr=run.lr,
        load_data=load_data,
        overwrite=True,
    )
    searched = trained(
        run,
        run.data,
        train,
        work / "searched",
        make_model=functools.partial(load_subnet, work / "search" / "subnet.json"),
    )
    resolution = fixed_backbone_resolution(
        run.backbone, len(subnet["spec"]["base"]["labels"]), run.resolutions, run.budget_mb
    )
    fixed = trained(run, run.data, train, work / "fixed", resolution=resolution)
    result = {
        "budget_mb": run.budget_mb,
        "backbone": run.backbone,
        "data": portable_path(run.data),
        "searched": {
            **result_row(*searched, not run.no_measure),
            "config": subnet["config"],
            "predicted_holdout_accuracy": subnet["predicted_accuracy"],
            "supernet_holdout_accuracy": subnet["holdout_accuracy"],
        },
        "fixed_backbone": {
            **result_row(*fixed, not run.no_measure),
            "note": "largest searched resolution whose TinyTL-L+B memory fits the budget",
        },
        "predictor": subnet["predictor"],
        "settings": {
            **{k: v for k, v in vars(run).items() if k not in ("out", "verbose")},
            "data": portable_path(run.data),
            "work": portable_path(run.work),
        },
        "search_seconds": round(search_seconds, 1),
    }
    Path(run.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(run.out, lambda path: Path(path).write_text(json.dumps(result, indent=2)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
