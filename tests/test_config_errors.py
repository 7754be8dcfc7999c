"""Config mistakes name the fix: an unknown key names the closest existing keys, an unknown
group option lists the options, a key that moved names its new place. Through
compose_config (tests, notebooks) and through `ssl-zoo train` (one line, status 2)."""

from __future__ import annotations

import pytest

from ssl_zoo.config import closest_keys, compose_config, key_paths
from ssl_zoo.errors import ConfigError
from tests.conftest import run_cli

TYPOS = {
    # typed -> the suggestion (the key moved to another node, or a typo in its node)
    "method.base_lrr=0.1": "optim.schedule.base_lr",
    "optim.schedule.base_lrr=0.1": "optim.schedule.base_lr",
    "data.batch_sise=8": "data.batch_size",
    "trainer.max_step=5": "trainer.max_steps",
    "optim.schedul.base_lr=0.1": "optim.schedule.base_lr",
    "callbacks.knn.every_n_step=3": "callbacks.knn.every_n_steps",
    "sed=1": "seed",
}


@pytest.mark.parametrize("override", list(TYPOS))
def test_an_unknown_key_names_the_closest_key(override, tmp_path):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as info:
        compose_config(["logger=csv", override], tmp_path)
    assert str(info.value) == f"{key} is not a key of this run's config; did you mean {TYPOS[override]}?"


def test_the_keys_searched_are_those_of_the_composed_config(tmp_path):
    # BYOL's keys come with method=byol, whatever follows the unknown key.
    with pytest.raises(ConfigError, match=r"^method\.momentum_teachr .* did you mean method\.momentum_teacher\?$"):
        compose_config(["method=byol", "method.momentum_teachr=0.9"], tmp_path)
    # Two unknown keys: the first is named, its suggestion still found.
    with pytest.raises(ConfigError, match=r"^data\.batch_sise .* did you mean data\.batch_size\?$"):
        compose_config(["data.batch_sise=8", "trainer.max_step=5"], tmp_path)


def test_no_close_key_says_how_to_list_or_add_keys(tmp_path):
    with pytest.raises(ConfigError) as info:
        compose_config(["method.zzzz=1"], tmp_path)
    assert str(info.value) == ("method.zzzz is not a key of this run's config (`ssl-zoo train --cfg job` prints them; "
                               "+method.zzzz=<value> adds a new key)")


def test_closest_keys_prefers_the_same_node_and_never_hydra_internals():
    paths = key_paths({"data": {"batch_size": 1, "global_batch_size": None, "_target_": "x"},
                       "knn": {"batch_size": 2}, "method": {"tau": 1}})
    assert closest_keys("data.batch_sise", paths) == ["data.batch_size"]
    assert closest_keys("knn.batch_sise", paths) == ["knn.batch_size"]
    assert closest_keys("other.batch_sise", paths) == ["data.batch_size", "knn.batch_size"]
    assert closest_keys("data._targe_", paths) == []
    assert closest_keys("method.x", paths) == []  # not its own node "method"


def test_unknown_option_and_moved_key_keep_their_messages(tmp_path):
    with pytest.raises(ConfigError, match=r"Could not find 'optim/optimizer/adam' \(available: adamw, lars, sgd\)$"):
        compose_config(["optim/optimizer=adam"], tmp_path)
    with pytest.raises(ConfigError, match=r"^method\.base_lr moved to optim\.schedule\.base_lr"):
        compose_config(["method.base_lr=0.1"], tmp_path)


@pytest.mark.parametrize(("args", "line"), [
    (["method.base_lrr=0.1"],
     "method.base_lrr is not a key of this run's config; did you mean optim.schedule.base_lr?"),
    (["--cfg", "job", "data.batch_sise=8"], "data.batch_sise is not a key of this run's config; did you mean data.batch_size?"),
    (["optim/optimizer=adam"], "In 'optim/default': Could not find 'optim/optimizer/adam' (available: adamw, lars, sgd)"),
    (["method.base_lr=0.1"], "method.base_lr moved to optim.schedule.base_lr: write optim.schedule.base_lr=0.1"),
])
def test_the_cli_prints_one_line_and_exits_2(args, line, tmp_path):
    result = run_cli(["train", *args, f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"ssl-zoo train: error: {line}"
    assert not (tmp_path / "run").exists()  # nothing started
