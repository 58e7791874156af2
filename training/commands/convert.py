"""``keras-vit convert``: an original ``.npz`` checkpoint (or a published name) written as
a ``.keras`` model or ``.weights.h5`` file, at any resolution and head."""
from __future__ import annotations

NAME = "convert"
HELP = "original .npz -> .keras / .weights.h5"


def add_arguments(parser):
    parser.add_argument("checkpoint", help="original .npz checkpoint, or a published name "
                                           "such as imagenet21k (downloaded once)")
    parser.add_argument("--model", required=True, help="architecture, e.g. ViT_B16")
    parser.add_argument("--image-size", type=int, nargs="+", help="one int or HEIGHT WIDTH "
                        "(default: the checkpoint's); position embeddings are resized to it")
    parser.add_argument("--num-classes", type=int, help="default: the checkpoint's; another "
                        "count gives a zero-initialised head for fine-tuning")
    parser.add_argument("--representation-size", type=int,
                        help="pre-logits width to keep (default: the checkpoint's with its head)")
    parser.add_argument("--classifier", choices=["token", "gap"])
    parser.add_argument("--output", required=True, help="model.keras or model.weights.h5")


def run(args) -> int:
    import keras_vit

    size = args.image_size and (args.image_size[0] if len(args.image_size) == 1
                                else tuple(args.image_size))
    model = keras_vit.convert_checkpoint(
        args.checkpoint, args.model, args.output, image_size=size,
        num_classes=args.num_classes, representation_size=args.representation_size,
        classifier=args.classifier)
    print(f"wrote {args.output}: {args.model} at {keras_vit.model_image_size(model)}, "
          f"{model.output_shape[-1]} outputs, {model.count_params():,} parameters")
    return 0
