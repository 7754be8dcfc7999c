"""What train and the callbacks read of a method and a datamodule is declared, not probed
with getattr: SSLMethod's attributes (uses_masks, step_signals, last_loss...) and the
datamodule's kNN splits (data/datamodule.py KnnData)."""

from types import SimpleNamespace

import lightning as L
import pytest

from ssl_zoo.callbacks.health import HealthMonitor
from ssl_zoo.callbacks.knn import KNNEvaluator
from ssl_zoo.data.datamodule import KnnData, knn_data
from ssl_zoo.methods.base import SSLMethod
from ssl_zoo.train import ConfigError, build_all, build_method
from tests.conftest import TINY_DATA, TINY_HEAD, TINY_VIT

QUIET = [*TINY_DATA, "callbacks.knn=null", "callbacks.progress=null", "callbacks.checkpoint=null", "~logger"]


def test_methods_declare_whether_they_mask(compose_cfg):
    assert SSLMethod.uses_masks is False
    dino = build_method(compose_cfg([*QUIET, *TINY_VIT, *TINY_HEAD]))
    dinov2 = build_method(compose_cfg([*QUIET, *TINY_VIT, *TINY_HEAD, "method=dinov2"]))
    assert dino.uses_masks is False and dinov2.uses_masks is True
    # Everything the callbacks read exists before the first step.
    assert dino.step_signals == {} and dino.last_loss is None and dino.last_loss_terms == {}
    assert dino.skip_teacher_update is False


def test_a_method_that_is_not_an_ssl_method_is_a_config_error(compose_cfg):
    with pytest.raises(ConfigError, match=r"method\._target_=torch\.nn\.Identity.*SSLMethod"):
        build_method(compose_cfg([*QUIET, "method._target_=torch.nn.Identity"]))


def test_knn_splits_are_found_by_protocol_and_absent_ones_turn_the_callbacks_off(compose_cfg):
    datamodule = build_all(compose_cfg([*QUIET, *TINY_HEAD]))["datamodule"]
    assert isinstance(datamodule, KnnData) and knn_data(datamodule) is datamodule
    no_splits = build_all(compose_cfg([*QUIET, *TINY_HEAD, "data.knn_train_set=null", "data.knn_val_set=null"]))
    assert knn_data(no_splits["datamodule"]) is None
    plain = L.LightningDataModule()
    assert not isinstance(plain, KnnData) and knn_data(plain) is None
    assert not KNNEvaluator()._enabled(SimpleNamespace(datamodule=plain))


def test_the_health_monitor_skips_a_module_outside_the_contract():
    monitor = HealthMonitor(every_n_steps=1)
    trainer = SimpleNamespace(global_step=1, loggers=[])
    monitor.on_train_batch_end(trainer, L.LightningModule(), None, {}, 0)  # no error, nothing measured
    assert monitor.last == {}
