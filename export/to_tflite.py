"""Export a trained model.keras to one on-device training .tflite (+ model.json). Thin over tinytl_tf.export.

    python export/to_tflite.py --model OUT/model.keras --out OUT/model.tflite [--optimizer adam --lr 1e-3 --frozen-bits 8]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model.keras written by `python -m tinytl_tf train`")
    p.add_argument("--out", required=True, help="the .tflite to write; model.json is written beside it")
    p.add_argument("--optimizer", default="adam", choices=("sgd", "adam"))
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the in-model schedule (default 3e-4)")
    p.add_argument("--schedule", default="cosine", choices=("cosine", "constant"))
    p.add_argument("--total-steps", type=int, default=1000, help="steps of the cosine schedule (default 1000)")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--frozen-bits", type=int, default=8, choices=(8, 32),
                   help="frozen conv/dense kernels stored as int8 (hybrid kernels, ~1%% output difference; default) or float32")
    p.add_argument("--batch-size", type=int, default=1, choices=(1,), help="the device graph trains at batch size 1")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    try:
        from tinytl_tf.export import export_model
        from tinytl_tf.train import load_trained

        if os.path.exists(args.out) and not args.overwrite:
            raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
        meta = export_model(load_trained(args.model), args.out, args.optimizer, args.lr, args.total_steps,
                            args.label_smoothing, args.schedule, frozen_bits=args.frozen_bits)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: meta[k] for k in ("fingerprint", "backbone", "method", "num_classes", "ops")}, indent=2))
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB) and model.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
