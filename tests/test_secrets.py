"""No secrets (W&B keys, tokens from the environment) in saved configs, logs or summaries."""

from __future__ import annotations

from ssl_zoo.train import redact_secrets, run_config_container
from tests.conftest import TINY_DATA, run_cli

SECRET = "sk-live-0123456789abcdef"


def test_secret_looking_keys_are_redacted_in_the_stored_config(compose_cfg):
    cfg = compose_cfg([*TINY_DATA, "+logger.settings.api_key=" + SECRET, "+data.auth_token=" + SECRET])
    stored = run_config_container(cfg)
    assert SECRET not in repr(stored)
    assert stored["logger"]["settings"]["api_key"] == "<redacted>"
    assert stored["data"]["batch_size"] == 32  # everything else stays
    assert redact_secrets({"a": [{"password": "x", "b": 1}]}) == {"a": [{"password": "<redacted>", "b": 1}]}


def test_a_run_writes_no_environment_secret_anywhere(tmp_path):
    run_dir = tmp_path / "run"
    env = {"WANDB_API_KEY": SECRET, "HF_TOKEN": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET}
    result = run_cli(["train", *TINY_DATA[:-1], "logger=wandb", "trainer.max_steps=2", "callbacks.knn.every_n_steps=0",
                      f"hydra.run.dir={run_dir}"], env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert SECRET not in result.stdout + result.stderr
    leaks = [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []
