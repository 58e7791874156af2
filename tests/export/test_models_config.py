"""models.config as TF Serving's ModelServerConfig: nothing lost, concurrent writers safe."""
import multiprocessing
import os

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

import keras_vit
from export import ExportError, export_saved_model
from export.models_config import read_models_config, register_model
from tests.conftest import TINY, perturb

HAND_WRITTEN = r'''
model_config_list {
  config {
    base_path: "/srv/models/resnet"
    name: "resnet"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 3 versions: 4 } }
    version_labels { key: "stable" value: 3 }
    version_labels { key: "canary" value: 4 }
  }
  config {
    name: "quoted"
    base_path: "/srv/models/a \"quoted\" dir"
    model_platform: "tensorflow"
  }
}
'''


def _parse(text):
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def test_hand_written_entries_and_fields_are_kept(tmp_path):
    base = tmp_path / "models"
    base.mkdir()
    (base / "models.config").write_text(HAND_WRITTEN)
    register_model(str(base), "vit")
    config = read_models_config(str(base / "models.config"))
    entries = config.model_config_list.config
    want = _parse(HAND_WRITTEN).model_config_list.config
    assert [e.name for e in entries] == ["resnet", "quoted", "vit"]
    assert entries[0] == want[0] and entries[1] == want[1]  # every field, unchanged
    assert entries[2].base_path == str(base / "vit") and entries[2].model_platform == "tensorflow"
    register_model(str(base), "resnet")  # already listed: left exactly as it was
    assert read_models_config(str(base / "models.config")) == config


def _register_many(base, names):
    for name in names:
        register_model(base, name)


def test_concurrent_writers_lose_nothing(tmp_path):
    base = str(tmp_path)
    groups = [[f"m{w}_{i}" for i in range(10)] for w in range(6)]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_register_many, args=(base, names)) for names in groups]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0] * len(workers)
    config = read_models_config(os.path.join(base, "models.config"))
    assert sorted(e.name for e in config.model_config_list.config) == \
        sorted(n for names in groups for n in names)
    assert sorted(os.listdir(base)) == [".models.config.lock", "models.config"]  # no temp files


def test_an_unreadable_config_is_left_alone_and_the_error_names_the_live_version(tmp_path):
    model = perturb(keras_vit.ViT(image_size=32, num_classes=5, name="tiny", **TINY), scale=0.1)
    base = tmp_path / "models"
    base.mkdir()
    (base / "models.config").write_text("model_config_list { config { nme: 'x' } }")
    with pytest.raises(ExportError, match=r"version .*tiny/1 was written and is live .*"
                                          r"models.config was not updated: .*models.config is "
                                          r"not a valid ModelServerConfig"):
        export_saved_model(model, str(base), name="tiny", warmup=False)
    assert (base / "models.config").read_text() == "model_config_list { config { nme: 'x' } }"
    assert os.path.exists(base / "tiny" / "1" / "saved_model.pb")
