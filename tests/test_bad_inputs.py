"""The catalog of bad inputs (docs/reliability.md): each one stops the run before any work
is lost, with one message that says what is wrong, where, and what to do.

Every case runs `ssl-zoo train <overrides>` (the CLI's entry point, in this process so that
a case can stand in for hardware this machine lacks) and checks its exit status, its one
line on stderr and what it left in the run directory. The docs table is rendered from the
messages these cases really produce:
``SSL_ZOO_UPDATE_DOCS=1 pytest tests/test_bad_inputs.py`` rewrites it.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

import ssl_zoo.train  # noqa: F401  (Lightning binds its console handler to sys.stderr on import: not to one test's capture)
from tests.conftest import REPO_ROOT, TINY_DATA, TINY_VIT, run_cli

# One xdist worker runs the whole catalog, so the docs test reuses the cases' messages.
pytestmark = pytest.mark.xdist_group("bad_inputs")

PREFIX = "ssl-zoo train: error: "
QUIET = ["~logger", "callbacks.progress=null", "callbacks.knn=null", "callbacks.curve=null"]
DOC = REPO_ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- catalog:begin -->", "<!-- catalog:end -->"


@dataclass
class Case:
    area: str
    what: str
    overrides: list[str]
    expected: str  # a regex the message must match
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    # Stands in for hardware this machine lacks (e.g. a GPU without bf16): (target, value)
    # pairs for monkeypatch.setattr.
    patches: list[tuple[str, object]] = field(default_factory=list)
    # For a failure after training began: checks what the run kept (checkpoint, files);
    # None: the error came before the first step and nothing may be written.
    kept: Callable[[Path], None] | None = None


def _images(directory: Path, classes=("a", "b"), per_class=4, corrupt=False) -> None:
    for name in classes:
        (directory / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = directory / name / f"{i}.jpg"
            if corrupt:
                path.write_bytes(b"\xff\xd8\xff this is not really a jpeg" * 3)
            else:
                Image.new("RGB", (40, 40), (40 * i, 100, 50)).save(path)


def _setup_empty(tmp: Path) -> None:
    (tmp / "empty").mkdir()


def _setup_corrupt(tmp: Path) -> None:
    _images(tmp / "corrupt", corrupt=True)


def _setup_file(tmp: Path) -> None:
    (tmp / "file.txt").write_text("not a directory")


def _setup_few(tmp: Path) -> None:
    _images(tmp / "few", per_class=2)


def _setup_knn_mismatch(tmp: Path) -> None:
    _images(tmp / "bank", classes=("cat", "dog"))
    _images(tmp / "queries", classes=("cat", "fox"))


def _setup_flat_knn(tmp: Path) -> None:
    _images(tmp / "bank", classes=("cat", "dog"))
    (tmp / "flat").mkdir()
    Image.new("RGB", (40, 40)).save(tmp / "flat" / "x.jpg")


def _setup_unreadable_ckpt(tmp: Path) -> None:
    (tmp / "empty.ckpt").write_bytes(b"")
    (tmp / "garbage.ckpt").write_bytes(b"\x00\x01 definitely not a checkpoint " * 50)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp / "bare.pt")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _setup_malicious_ckpt(tmp: Path) -> None:
    with open(tmp / "crafted.ckpt", "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Exploit()}, f)


def _setup_foreign_ckpt(tmp: Path) -> None:
    # A BYOL checkpoint's tensors, as a DINO run would meet them.
    from ssl_zoo.config import compose_config
    from ssl_zoo.train import build_all

    parts = build_all(compose_config([*TINY_DATA, *QUIET, "method=byol"], tmp))
    torch.save({"state_dict": parts["method"].state_dict(), "ssl_zoo_config": {
        "method": {"_target_": "ssl_zoo.methods.byol.BYOL"}, "backbone": {"model_name": "resnet10t"}}},
        tmp / "byol.ckpt")


def _setup_vit_ckpt(tmp: Path) -> None:
    from ssl_zoo.config import compose_config
    from ssl_zoo.train import build_all

    parts = build_all(compose_config([*TINY_DATA, *QUIET, *TINY_VIT], tmp))
    torch.save({"state_dict": parts["method"].state_dict()}, tmp / "vit.ckpt")


def _setup_vit_dcp_ckpt(tmp: Path) -> None:
    """An FSDP2 checkpoint directory (torch.distributed.checkpoint shards + Lightning's
    meta.pt) of a ViT run, written here by one process."""
    import warnings

    from torch.distributed.checkpoint import save as dcp_save

    from ssl_zoo.config import compose_config
    from ssl_zoo.train import build_all

    parts = build_all(compose_config([*TINY_DATA, *QUIET, *TINY_VIT], tmp))
    directory = tmp / "vit_fsdp.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "assuming ... a single process": it is
        dcp_save({"state_dict": parts["method"].state_dict()}, checkpoint_id=str(directory))
    torch.save({"global_step": 2, "ssl_zoo_config": {"method": {"_target_": "ssl_zoo.methods.dino.DINO"},
                                                     "backbone": {"model_name": "vit_tiny_patch16_224"}}},
               directory / "meta.pt")


def _setup_vanishing(tmp: Path) -> None:
    _images(tmp / "vanish", per_class=8)  # 16 images, 4 steps of 4 per epoch


def _kept_step(step: int, batch_size: int) -> Callable[[Path], None]:
    """The run saved last.ckpt at ``step`` (a step boundary it reached) and no summary."""

    def check(run_dir: Path) -> None:
        checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["global_step"] == step
        assert checkpoint["ssl_zoo_resume"]["data"]["samples"] == step * batch_size  # where the data continues
        assert not (run_dir / "summary.json").exists()

    return check


def _setup_full_disk_summary(tmp: Path) -> None:
    # /dev/full: every write to it fails with ENOSPC, as on a full disk.
    (tmp / "run").mkdir()
    (tmp / "run" / "summary.json").symlink_to("/dev/full")


def _setup_full_disk_metrics(tmp: Path) -> None:
    (tmp / "run" / "csv" / "version_0").mkdir(parents=True)
    (tmp / "run" / "csv" / "version_0" / "metrics.csv").symlink_to("/dev/full")


def _kept_final_checkpoint(run_dir: Path) -> None:
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


# A pre-Ampere GPU, as torch would report it.
OLD_GPU = [("torch.cuda.is_available", lambda: True), ("torch.cuda.is_bf16_supported", lambda **_: False),
           ("torch.cuda.get_device_name", lambda *_: "Tesla V100-SXM2-16GB")]

CASES = {
    # --- configuration ---------------------------------------------------------------------
    "negative-temperature": Case("config", "a teacher temperature <= 0", ["method.teacher_temp=-1"],
                                 r"^method\.teacher_temp must be > 0, got -1"),
    "wrong-type-batch": Case("config", "a batch size that is not a number", ["data.batch_size=abc"],
                             r"^data\.batch_size must be an int >= 1, got 'abc'"),
    "zero-batch": Case("config", "a batch size of 0", ["data.batch_size=0"], r"^data\.batch_size must be an int >= 1"),
    "negative-workers": Case("config", "negative DataLoader workers", ["data.num_workers=-1"],
                             r"^data\.num_workers must be an int >= 0"),
    "wrong-type-seed": Case("config", "a seed that is not an int", ["seed=abc"], r"^seed must be an int"),
    "steps-vs-epochs": Case("config", "max_steps and max_epochs that disagree",
                            ["trainer.max_epochs=1", "trainer.max_steps=5"],
                            r"trainer\.max_steps=5 and trainer\.max_epochs=1 disagree.*trainer\.max_epochs=null"),
    "unknown-optimizer": Case("config", "an optimizer that does not exist", ["optim/optimizer=adam"],
                              r"optim/optimizer/adam.*adamw.*lars.*sgd"),
    "moved-optim-key": Case("config", "an optimizer key at its old place", ["method.base_lr=0.1"],
                            r"^method\.base_lr moved to optim\.schedule\.base_lr: write optim\.schedule\.base_lr=0\.1$"),
    "unknown-key-moved": Case("config", "a mistyped key that lives in another node", ["method.base_lrr=0.1"],
                              r"^method\.base_lrr is not a key of this run's config; did you mean optim\.schedule\.base_lr\?$"),
    "unknown-key-typo": Case("config", "a mistyped key", ["data.batch_sise=8"],
                             r"^data\.batch_sise is not a key of this run's config; did you mean data\.batch_size\?$"),
    "unknown-key-trainer": Case("config", "a mistyped trainer key", ["trainer.max_step=5"],
                                r"^trainer\.max_step is not a key of this run's config; did you mean trainer\.max_steps\?$"),
    "bad-trust-ratio": Case("config", "an unknown LARS trust ratio", ["optim/optimizer=lars", "optim.optimizer.trust_ratio=paper"],
                            r"^optim\.optimizer\.trust_ratio must be one of \('byol', 'lars_paper'\), got 'paper'$"),
    "bad-sgd-momentum": Case("config", "a momentum torch's SGD refuses", ["optim/optimizer=sgd", "optim.optimizer.momentum=-1"],
                             r"^optim\.optimizer \(torch\.optim\.sgd\.SGD\): Invalid momentum value: -1"),
    "bad-target-init": Case("config", "an unknown BYOL target initialisation", ["method=byol", "method.target_init=random"],
                            r"target_init.*copy.*independent"),
    "target-init-vs-init-from": Case("config", "BYOL's independent target with pretrained weights",
                                     ["method=byol", "method.target_init=independent", "backbone.init_from={tmp}/w.pth"],
                                     r"^method\.target_init=independent .* backbone\.init_from=.*w\.pth .* "
                                     r"keep method\.target_init=copy"),
    "bad-clip-mode": Case("config", "an unknown gradient-clipping mode", ["optim.grad_clip_mode=layerwise"],
                          r"^optim\.grad_clip_mode must be one of"),
    "byol-local-crops": Case("config", "BYOL with local crops",
                             ["method=byol", "augmentation.transform.n_local=2"], r"augmentation\.transform\.n_local"),
    "dinov2-on-cnn": Case("config", "DINOv2's iBOT on a CNN (no patch tokens)",
                          ["method=dinov2", "backbone=resnet10t"], r"method=dinov2 .*backbone=resnet10t has none"),
    "dinov2-no-masks": Case("config", "DINOv2 on a ViT with the iBOT masks switched off",
                            ["method=dinov2", *TINY_VIT, "augmentation.masking=null"],
                            r"augmentation\.masking is null.*ibot_weight=0"),
    "crop-vs-patch": Case("config", "a crop size the ViT patch size does not divide",
                          [*TINY_VIT, "data.image_size=30"], r"augmentation\.transform\.global_size=30 is not divisible"),
    "fsdp-no-blocks": Case("config", "FSDP2 with a backbone that has no blocks to shard",
                           ["trainer=fsdp_cpu", "backbone.model_name=dla46_c"],
                           r"^trainer\.strategy is FSDP2 .* backbone\.model_name=dla46_c has no blocks to shard .*"
                           r"trainer=ddp_cpu"),
    "knn-k": Case("config", "a kNN with k = 0", ["callbacks.knn.k=0"], r"^callbacks\.knn\.k must be >= 1, got 0"),
    "global-batch": Case("config", "a global batch the devices cannot give", ["+data.global_batch_size=48"],
                         r"data\.global_batch_size=48 but .* = 32 x 1 x 1 x 1 = 32"),
    "bad-precision": Case("config", "a precision Lightning does not know", ["trainer.precision=bf17"],
                          r"^trainer: Precision 'bf17' is invalid"),
    "global-batch-indivisible": Case("config", "a global batch not divisible by the number of processes",
                                     ["trainer=ddp_cpu", "+data.global_batch_size=63"],
                                     r"^data\.global_batch_size=63 is not divisible by trainer\.devices x trainer\.num_nodes "
                                     r"x trainer\.accumulate_grad_batches = 2 x 1 x 1 = 2: set data\.global_batch_size=62 or 64 "
                                     r"\(data\.batch_size=31 or 32; now 32 x 2 x 1 x 1 = 64\)"),
    "precision-64": Case("config", "float64 training", ["trainer.precision=64-true"],
                         r"^trainer\.precision=64-true: float64 training is not supported"),
    "guard-limit": Case("config", "a negative non-finite step limit", ["callbacks.nonfinite.max_skipped_steps=-1"],
                        r"callbacks\.nonfinite\.max_skipped_steps must be an int >= 0"),
    # --- data ------------------------------------------------------------------------------
    "missing-root": Case("data", "an image folder that does not exist",
                         ["data=imagefolder", "data.root={tmp}/nowhere"], r"^data\.root=.*nowhere does not exist"),
    "root-is-file": Case("data", "an image folder that is a file", ["data=imagefolder", "data.root={tmp}/file.txt"],
                         r"is a file, not a directory", _setup_file),
    "empty-folder": Case("data", "an empty dataset", ["data=imagefolder", "data.root={tmp}/empty"],
                         r"no images .* under data\.root=.*empty: expected an image tree", _setup_empty),
    "all-corrupt": Case("data", "every image corrupt", ["data=imagefolder", "data.root={tmp}/corrupt"],
                        r"all 8 image file\(s\) under data\.root=.*corrupt are bad, e\.g\. a/0\.jpg \(not an image", _setup_corrupt),
    "fewer-than-batch": Case("data", "fewer images than one batch",
                             ["data=imagefolder", "data.root={tmp}/few", "data.batch_size=32"],
                             r"the training set has 4 images, fewer than data\.batch_size=32", _setup_few),
    "knn-classes": Case("data", "kNN bank and queries with different classes",
                        ["data=imagefolder", "data.root={tmp}/bank", "data.knn_train_root={tmp}/bank",
                         "data.knn_val_root={tmp}/queries", "data.batch_size=4"],
                        r"the kNN splits have different classes", _setup_knn_mismatch),
    "knn-no-classes": Case("data", "kNN queries without class folders",
                           ["data=imagefolder", "data.root={tmp}/bank", "data.knn_train_root={tmp}/bank",
                            "data.knn_val_root={tmp}/flat", "data.batch_size=4"],
                           r"must hold class folders", _setup_flat_knn),
    # --- checkpoints ------------------------------------------------------------------------
    "ckpt-missing": Case("checkpoint", "ckpt_path to a file that does not exist", ["ckpt_path={tmp}/nope.ckpt"],
                         r"nope\.ckpt: no such file"),
    "ckpt-empty": Case("checkpoint", "an empty checkpoint file", ["ckpt_path={tmp}/empty.ckpt"],
                       r"empty\.ckpt: the file is empty", _setup_unreadable_ckpt),
    "ckpt-garbage": Case("checkpoint", "a corrupt or truncated checkpoint", ["ckpt_path={tmp}/garbage.ckpt"],
                         r"garbage\.ckpt: cannot be read .* truncated, corrupt", _setup_unreadable_ckpt),
    "ckpt-bare": Case("checkpoint", "a bare state dict as ckpt_path", ["ckpt_path={tmp}/bare.pt"],
                      r"bare\.pt: no 'state_dict' inside", _setup_unreadable_ckpt),
    "ckpt-malicious": Case("checkpoint", "a pickle that would run code", ["ckpt_path={tmp}/crafted.ckpt"],
                           r"crafted\.ckpt: cannot be read .*pickled code, which is refused", _setup_malicious_ckpt),
    "ckpt-other-method": Case("checkpoint", "a checkpoint from another method", ["ckpt_path={tmp}/byol.ckpt"],
                              r"does not fit this run's DINO on backbone=resnet10t \(written by BYOL", _setup_foreign_ckpt),
    "ckpt-other-backbone": Case("checkpoint", "a checkpoint from another backbone", ["ckpt_path={tmp}/vit.ckpt"],
                                r"does not fit this run's DINO on backbone=resnet10t: .* tensors missing",
                                _setup_vit_ckpt),
    "ckpt-fsdp-other-backbone": Case("checkpoint", "an FSDP2 (sharded) checkpoint from another backbone",
                                     ["ckpt_path={tmp}/vit_fsdp.ckpt"],
                                     r"vit_fsdp\.ckpt: does not fit this run's DINO on backbone=resnet10t \(written by "
                                     r"DINO on backbone=vit_tiny_patch16_224\): .* tensors missing", _setup_vit_dcp_ckpt),
    "ckpt-fsdp-incomplete": Case("checkpoint", "an FSDP2 checkpoint directory whose save was interrupted",
                                 ["ckpt_path={tmp}/half.ckpt"], r"half\.ckpt: a directory without meta\.pt and "
                                 r"\.metadata, so not a complete FSDP2 .* give an older checkpoint",
                                 lambda tmp: (tmp / "half.ckpt").mkdir()),
    "init-from-missing": Case("checkpoint", "backbone.init_from to a missing file",
                              ["backbone.init_from={tmp}/weights.pth"], r"backbone\.init_from.*weights\.pth"),
    # --- during the run ---------------------------------------------------------------------
    "root-vanishes": Case("data", "the image folder deleted during the run (a test callback removes it after step 2)",
                          ["data=imagefolder", "data.root={tmp}/vanish", "trainer.max_steps=6",
                           "+callbacks.vanish={_target_: tests.faults.RemoveAfterStep, path: '{tmp}/vanish', step: 2}"],
                          r"^data\.root=.*vanish is gone: it held 16 images when the run started, and .*\.jpg cannot be "
                          r"read now \(moved, deleted or unmounted during the run\)\. Saved step 2 to .*last\.ckpt; once "
                          r"that is fixed, add hydra\.run\.dir=.*run resume=auto to the same command$",
                          _setup_vanishing, kept=_kept_step(2, 4)),
    "disk-full-summary": Case("environment", "a full disk when the summary is written (summary.json is /dev/full)", [],
                              r"^cannot write .*summary\.json: No space left on device \(\[Errno 28\]\): free space in "
                              r".*, or point hydra\.run\.dir elsewhere\. Training finished at step 2; its checkpoint "
                              r".*last\.ckpt is complete", _setup_full_disk_summary, kept=_kept_final_checkpoint),
    "disk-full-metrics": Case("environment", "a full disk when the metrics are written (metrics.csv is /dev/full)",
                              ["logger=csv", "+logger.version=0", "trainer.log_every_n_steps=1"],
                              r"^a write under .*run failed: No space left on device \(\[Errno 28\]\): free space in "
                              r".*run, or point hydra\.run\.dir elsewhere\. Saved step 1 to .*last\.ckpt; once that is "
                              r"fixed, add hydra\.run\.dir=.*run resume=auto to the same command$",
                              _setup_full_disk_metrics, kept=_kept_step(1, 32)),
    # --- environment ------------------------------------------------------------------------
    "precision-fp16-cpu": Case("environment", "fp16 autocast on a CPU", ["trainer.precision=16-mixed"],
                               r"^trainer\.precision=16-mixed: fp16 autocast does not run on CPUs.*bf16-mixed or 32-true"),
    "precision-bf16-cpu": Case("environment", "bf16 on a CPU without bf16 support", ["trainer.precision=bf16-mixed"],
                               r"^trainer\.precision=bf16-mixed: this CPU \(.*\) has no bf16 support.*32-true",
                               patches=[("ssl_zoo.parallel.precision.cpu_has_bf16", lambda: False),  # an AVX2-only CPU
                                        ("ssl_zoo.parallel.precision.cpu_model_and_flags",
                                         lambda: ("Intel(R) Xeon(R) CPU E5-2680 v3", {"avx2"}))]),
    "precision-bf16-gpu": Case("environment", "bf16 on a GPU without bf16", ["trainer=gpu", "trainer.precision=bf16-mixed"],
                               r"^trainer\.precision=bf16-mixed: Tesla V100-SXM2-16GB has no bf16 arithmetic.*16-mixed",
                               patches=OLD_GPU),
    "wandb-online": Case("environment", "W&B online mode without credentials",
                         ["logger=wandb", "logger.offline=false"],
                         r"no W&B credentials were found.*wandb login.*logger\.offline=true",
                         env={"WANDB_API_KEY": "", "NETRC": "/nonexistent/netrc"}),
}


def _base(overrides: list[str]) -> list[str]:
    """TINY_DATA for the embedded data; for image folders only what the case leaves unset."""
    if "data=imagefolder" not in overrides:
        return TINY_DATA
    base = ["data.num_workers=0", "data.batch_size=4", "logger=csv"]
    given = {o.split("=", 1)[0] for o in overrides}
    return [o for o in base if o.split("=", 1)[0] not in given]


def _cli_train(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`ssl-zoo train <args>` in this process (so that the cases' patches apply): its exit
    status and stderr."""
    from ssl_zoo.cli.main import main

    # The CLI points sys.argv (and __main__'s spec) at the Hydra app for DDP re-launches.
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", getattr(sys.modules["__main__"], "__spec__", None),
                        raising=False)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    # Hydra's logging setup (logging.config.dictConfig) would close every log handler of
    # this process, pytest's included: in here the run keeps the process's logging.
    for module in ("hydra.core.utils", "hydra._internal.hydra"):
        monkeypatch.setattr(f"{module}.configure_log", lambda *_, **__: None)
    capsys.readouterr()
    try:
        status = main(["train", *args])
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err


def _run(case: Case, tmp: Path, monkeypatch, capsys) -> str:
    if case.setup is not None:
        case.setup(tmp)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    for target, value in case.patches:
        monkeypatch.setattr(target, value)

    overrides = [o.replace("{tmp}", str(tmp)) for o in case.overrides]
    run_dir = tmp / "run"
    given = {".".join(o.split("=", 1)[0].split(".")[:2]) for o in overrides}  # e.g. callbacks.knn
    quiet = [q for q in QUIET if not (q == "~logger" and any(o.startswith("logger=") for o in overrides))
             and q.split("=", 1)[0] not in given]
    status, stderr = _cli_train([*_base(overrides), *quiet, "trainer.max_steps=2", *overrides, f"hydra.run.dir={run_dir}"],
                                monkeypatch, capsys)
    # 2: the overrides do not compose (unknown key or option); 1: the run refused or stopped.
    assert status in (1, 2), f"status {status}\n{stderr[-3000:]}"
    errors = [line for line in stderr.splitlines() if line.startswith(PREFIX)]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    if case.kept is None:
        # Nothing was trained or written over: the error came before the first step.
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "summary.json").exists()
    else:
        case.kept(run_dir)
    return errors[0].removeprefix(PREFIX)


MESSAGES: dict[str, str] = {}  # case -> message with <dir> for its directory (reused by the docs test)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_clear_message(name, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    message = _run(case, tmp_path, monkeypatch, capsys)
    MESSAGES[name] = message.replace(str(tmp_path), "<dir>")
    assert re.search(case.expected, message, re.S), message
    assert "Traceback" not in message and len(message) < 700


def test_catalog_has_at_least_45_inputs_across_all_areas():
    assert len(CASES) >= 45
    assert {c.area for c in CASES.values()} == {"config", "data", "checkpoint", "environment"}


def test_docs_list_the_catalog_with_each_message(tmp_path_factory, monkeypatch, capsys):
    rows = []
    for name, case in CASES.items():
        if name not in MESSAGES:  # this worker did not run that case yet
            tmp = tmp_path_factory.mktemp(name)
            with pytest.MonkeyPatch.context() as patch:  # each case its own patches
                MESSAGES[name] = _run(case, tmp, patch, capsys).replace(str(tmp), "<dir>")
        message = MESSAGES[name]
        inputs = " ".join(o.replace("{tmp}", "<dir>") for o in case.overrides)
        rows.append(f"| {case.area} | {case.what} | `{inputs}` | {message.replace('|', '/')} |")
    table = "| area | bad input | overrides | message |\n|---|---|---|---|\n" + "\n".join(rows)
    section = f"{BEGIN}\n{table}\n{END}"
    text = DOC.read_text() if DOC.exists() else ""
    if os.environ.get("SSL_ZOO_UPDATE_DOCS") == "1":
        pattern = re.escape(BEGIN) + ".*?" + re.escape(END)
        DOC.write_text(re.sub(pattern, lambda _: section, text, flags=re.S) if BEGIN in text else text + "\n" + section + "\n")
        text = DOC.read_text()
    assert section in text, "docs/reliability.md is out of date: SSL_ZOO_UPDATE_DOCS=1 pytest tests/test_bad_inputs.py"


def test_the_cli_prints_the_message_alone(tmp_path):
    result = run_cli(["train", *TINY_DATA, "data.batch_size=abc", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "ssl-zoo train: error: data.batch_size must be an int >= 1, got 'abc'"
    assert "Traceback" not in result.stderr
