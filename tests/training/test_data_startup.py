"""The training and evaluation pipelines are built without AutoGraph converting the per-image
functions: they use tf.cond / tf.while_loop themselves, and converting keras_vit's decoders
(the GIF parser's loops included) cost half of a process's time to its first batch
(benchmarks/results/2026-12-06-input-pipeline.md)."""
import os

import numpy as np
import tensorflow as tf
from tensorflow.python.autograph.impl import api as autograph_api

from training.data import (BadImages, load_source, make_eval_pipeline, make_pipeline,
                           make_train_pipeline)


def test_pipelines_do_not_autograph_the_decoders(tmp_path, monkeypatch):
    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
        for index in range(2):
            pixels = np.full((12, 16, 3), 40 * index, np.uint8)
            (tmp_path / name / f"{index}.jpg").write_bytes(tf.io.encode_jpeg(pixels).numpy())
    converted = []
    convert = autograph_api._convert_actual

    def recording(entity, program_ctx):
        converted.append(getattr(entity, "__qualname__", repr(entity)))
        return convert(entity, program_ctx)

    monkeypatch.setattr(autograph_api, "_convert_actual", recording)
    source = load_source(f"folder:{tmp_path}")
    train = make_train_pipeline(source.train, 8, 2, seed=0, crop_area_min=0.5, flip=True,
                                read=source.read, bad_images=BadImages())
    evaluation = make_eval_pipeline(source.test, 8, 2, num_examples=2, global_batch_size=2,
                                    read=source.read, bad_images=BadImages())
    plain = make_pipeline(source.test, 8, 2, read=source.read)
    for pipeline in (train, evaluation, plain):  # and they still make batches
        images, labels = next(iter(pipeline))
        assert images.shape == (2, 8, 8, 3) and labels.shape == (2,)
    assert converted, "the recording hook saw no AutoGraph conversion at all"
    decoders = [name for name in converted
                if "decode" in name or "prepare" in name or "crop" in name]
    assert decoders == [], decoders
