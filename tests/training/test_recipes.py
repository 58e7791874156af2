import keras
import pytest

from training.optimizers import WarmupLinearDecay, make_optimizer, make_schedule
from training.recipes import RECIPES


def test_paper_recipes():
    ft, pt = RECIPES["finetune"], RECIPES["pretrain"]
    assert (ft.optimizer, ft.momentum, ft.batch_size, ft.image_size, ft.weight_decay,
            ft.clip_global_norm, ft.schedule) == ("sgd", 0.9, 512, 384, 0.0, 1.0, "cosine")
    assert (pt.optimizer, pt.beta_1, pt.beta_2, pt.batch_size, pt.image_size, pt.warmup_steps,
            pt.schedule, pt.dropout_rate) == ("adamw", 0.9, 0.999, 4096, 224, 10_000, "linear",
                                              0.1)
    assert pt.weight_decay > 0


def test_schedules_warm_up_then_decay():
    cosine = make_schedule(RECIPES["finetune"].replace(learning_rate=0.1, warmup_steps=10), 110)
    values = [float(cosine(s)) for s in (0, 5, 10, 60, 110)]
    assert values[0] == 0 and values[1] == pytest.approx(0.05) and values[2] == pytest.approx(0.1)
    assert values[3] == pytest.approx(0.05, rel=1e-3) and values[4] == pytest.approx(0.0, abs=1e-7)
    linear = WarmupLinearDecay(1.0, 10, 110)
    assert [float(linear(s)) for s in (5, 10, 60, 110)] == pytest.approx([0.5, 1.0, 0.5, 0.0])


def test_weight_decay_spares_biases_norms_and_embeddings():
    import keras_vit
    model = keras_vit.ViT(image_size=16, patch_size=8, hidden_size=16, mlp_size=16,
                          num_heads=2, num_layers=1, num_classes=3)
    optimizer = make_optimizer(RECIPES["pretrain"], 100)
    optimizer.build(model.trainable_variables)
    decayed = {v.name for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert decayed == {"kernel", "qkv_kernel", "out_kernel", "mlp1_kernel", "mlp2_kernel"}
    assert isinstance(make_optimizer(RECIPES["finetune"], 100), keras.optimizers.SGD)


def test_replace_keeps_unset_fields_and_epochs_override_steps():
    ft = RECIPES["finetune"]
    assert ft.replace(batch_size=None, learning_rate=0.01) == \
        RECIPES["finetune"].replace(learning_rate=0.01)
    by_epochs = ft.replace(epochs=3)
    assert (by_epochs.epochs, by_epochs.steps) == (3, None)
    assert ft.replace(epochs=3, steps=7).steps == 7
