"""Markers and helpers of the training tests."""
import os


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that runs several training processes "
                                       "(still part of CI)")


def rewind_run(run_dir, step):
    """The run directory as a kill right after checkpoint ``step`` would have left it."""
    import tensorflow as tf

    ckpt_dir = os.path.join(run_dir, "checkpoints")
    for name in os.listdir(ckpt_dir):
        if name.startswith("ckpt-") and int(name.split("-")[1].split(".")[0]) > step:
            os.remove(os.path.join(ckpt_dir, name))
    tf.compat.v1.train.update_checkpoint_state(ckpt_dir, os.path.join(ckpt_dir, f"ckpt-{step}"))
    for name in ("metrics.json", "model.keras", "labels.txt", "labels.json"):
        if os.path.exists(os.path.join(run_dir, name)):
            os.remove(os.path.join(run_dir, name))
