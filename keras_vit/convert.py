"""``keras-vit convert``: an original ``.npz`` checkpoint to a ``.keras`` or ``.weights.h5`` file."""
from __future__ import annotations

import argparse
import sys

from keras_vit.variants import VARIANTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="original .npz checkpoint (or a published name "
                                           "such as imagenet21k, downloaded once)")
    parser.add_argument("--model", required=True, choices=sorted(VARIANTS),
                        help="architecture of the checkpoint")
    parser.add_argument("--image-size", type=int, nargs="+", default=[224],
                        help="resolution of the converted model: one int or HEIGHT WIDTH; "
                             "position embeddings are resized to it")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="class count of the new head (default: the checkpoint's); a "
                             "different count gives a zero-initialised head for fine-tuning")
    parser.add_argument("--representation-size", type=int, default=None,
                        help="keep the checkpoint's pre-logits layer of this size")
    parser.add_argument("--classifier", choices=["token", "gap"], default="token")
    parser.add_argument("--output", required=True, help="model.keras or model.weights.h5")


def run(args: argparse.Namespace) -> str:
    import keras_vit
    from keras_vit.checkpoints import read_npz_index
    from keras_vit.pretrained import resolve_weights

    if not args.output.endswith((".keras", ".weights.h5")):
        raise ValueError(f"--output must end in .keras or .weights.h5, got {args.output!r}")
    path = resolve_weights(args.model, args.checkpoint)
    num_classes = args.num_classes
    if num_classes is None:
        index = read_npz_index(path)
        if "head/bias" not in index:
            raise ValueError(f"{path} has no head/bias; pass --num-classes")
        num_classes = int(index["head/bias"].shape[0])
    size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size)
    model = getattr(keras_vit, args.model)(
        image_size=size, num_classes=num_classes, classifier=args.classifier,
        representation_size=args.representation_size)
    keras_vit.load_pretrained(model, path)
    if args.output.endswith(".keras"):
        model.save(args.output)
    else:
        model.save_weights(args.output)
    print(f"wrote {args.output}: {args.model} at {keras_vit.model_image_size(model)}, "
          f"{num_classes} classes, {model.count_params():,} parameters")
    return args.output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="keras-vit convert", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as error:
        print(f"keras-vit convert: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
