"""`ssl-zoo eval knn|linear|fewshot` on a tiny real run: eval.json, the feature cache,
teacher vs student, labeled folders, W&B offline, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ssl_zoo import cli
from ssl_zoo.datasets.synthetic import TexelsDataset
from tests.conftest import run_cli
from tests.tiny_run import tiny_vit_run

pytestmark = pytest.mark.slow
FAST = ["data.num_workers=0", "progress=false"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_vit_run(tmp_path_factory) / "checkpoints" / "last.ckpt"


def _eval_json(ckpt: Path) -> dict:
    return json.loads((ckpt.parent / "eval.json").read_text())["last.ckpt"]


def test_knn_through_the_cli_then_from_the_cache(ckpt, tmp_path, capsys):
    cache = tmp_path / "features"
    result = run_cli(["eval", "knn", f"ckpt={ckpt}", f"cache_dir={cache}", "knn.k=10", *FAST])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "kNN (k=10, T=0.07)" in result.stdout and "extracted and cached" in result.stdout
    knn = _eval_json(ckpt)["teacher"]["run"]["knn"]
    assert knn["n_train"] == 256 and knn["n_val"] == 128 and knn["num_classes"] == 10
    assert 0.0 <= knn["top1"] <= knn["top5"] <= 1.0 and knn["params"] == {"k": 10, "temperature": 0.07}
    assert knn["features_from_cache"] == {"train": False, "val": False}
    files = sorted(cache.glob("teacher-*.pt"))
    assert len(files) == 2
    mtimes = [f.stat().st_mtime_ns for f in files]

    # Second call (in-process, same CLI entry point): features come from the cache files.
    assert cli.main(["eval", "knn", f"ckpt={ckpt}", f"cache_dir={cache}", "knn.k=10", *FAST]) == 0
    assert "read from cache" in capsys.readouterr().out
    again = _eval_json(ckpt)["teacher"]["run"]["knn"]
    assert again["features_from_cache"] == {"train": True, "val": True}
    assert again["top1"] == knn["top1"] and again["top5"] == knn["top5"]
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_linear_and_fewshot_merge_into_eval_json_and_log_to_wandb(ckpt, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = ["linear.lrs=[0.1,1.0]", "linear.weight_decays=[0,0.001]", "linear.epochs=5", *FAST]
    assert cli.main(["eval", "linear", f"ckpt={ckpt}", *args]) == 0
    shots = ["fewshot.shots=[1,3]", "fewshot.seeds=3", "logger=wandb", *FAST]
    assert cli.main(["eval", "fewshot", f"ckpt={ckpt}", *shots]) == 0
    out = capsys.readouterr().out
    assert "linear probe (lr=" in out and "3-shot, nearest class mean (3 seeds)" in out and "±" in out
    results = _eval_json(ckpt)["teacher"]["run"]
    assert {"linear", "fewshot"} <= set(results)  # merged, neither replaced the other
    linear = results["linear"]
    assert len(linear["sweep"]) == 4 and 0.0 <= linear["top1"] <= 1.0
    assert (linear["chosen"]["lr"], linear["chosen"]["weight_decay"]) in {(s["lr"], s["weight_decay"]) for s in linear["sweep"]}
    fewshot = results["fewshot"]["shots"]
    assert set(fewshot) == {"1", "3"}
    assert all(0.0 <= r["top1_mean"] <= 1.0 and r["top1_std"] >= 0.0 for r in fewshot.values())
    assert list((ckpt.parent.parent / "wandb").glob("offline-run-*"))


def test_student_features_differ_from_teacher(ckpt):
    for which in ("teacher", "student"):
        assert cli.main(["eval", "knn", f"ckpt={ckpt}", f"which={which}", *FAST]) == 0
    results = _eval_json(ckpt)
    paths = {which: results[which]["run"]["knn"]["features"]["train"] for which in ("teacher", "student")}
    assert paths["teacher"] != paths["student"]
    teacher, student = (torch.load(paths[w], weights_only=True)["features"] for w in ("teacher", "student"))
    assert teacher.shape == student.shape and not torch.allclose(teacher, student)


def _write_folders(root: Path, split: str, per_class: int) -> Path:
    data = TexelsDataset(split=split, num_images=3 * per_class, image_size=32, num_classes=3, seed=1)
    for i in range(len(data)):
        image, label = data[i]
        folder = root / split / data.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return root / split


def test_labeled_folders_with_the_runs_eval_transform(ckpt, tmp_path):
    train, val = _write_folders(tmp_path, "train", 8), _write_folders(tmp_path, "val", 4)
    args = [f"data.train_root={train}", f"data.val_root={val}", "knn.k=5", "data.image_size=32", *FAST]
    assert cli.main(["eval", "knn", f"ckpt={ckpt}", *args]) == 0
    tag = f"{train} -> {val}"
    knn = _eval_json(ckpt)["teacher"][tag]["knn"]
    assert knn["n_train"] == 24 and knn["n_val"] == 12 and knn["num_classes"] == 3
    assert knn["top5"] is None  # 3 classes: top-5 would be 100% by construction
    assert knn["transform"]["size"] == 32 and knn["transform"]["mean"] == [0.5, 0.5, 0.5]


def test_bad_input_gives_one_line_errors(ckpt, tmp_path, capsys):
    def error(args: list[str]) -> str:
        assert cli.main(["eval", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("ssl-zoo eval: error:") and "\n" not in err, err
        return err

    assert "nope.ckpt: no such file" in error(["knn", f"ckpt={tmp_path / 'nope.ckpt'}"])
    assert "knn.k must be an int >= 1, got 0" in error(["knn", f"ckpt={ckpt}", "knn.k=0"])
    assert "knn.temperature must be > 0" in error(["knn", f"ckpt={ckpt}", "knn.temperature=0"])
    assert "unknown evaluation 'probe'" in error(["probe", f"ckpt={ckpt}"])
    assert "ckpt is not set" in error(["knn"])
    assert "foo" in error(["knn", f"ckpt={ckpt}", "foo=1"])
    assert "data.train_root and data.val_root go together" in error(["knn", f"ckpt={ckpt}", f"data.train_root={tmp_path}"])
    assert "fewshot.shots (each entry) must be an int >= 1" in error(["fewshot", f"ckpt={ckpt}", "fewshot.shots=[0]"])
    assert "which='best': choose one of teacher, student" in error(["knn", f"ckpt={ckpt}", "which=best"])

    # A method without a teacher (as method=supervised saves): which=teacher says what to do.
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}
    no_teacher = tmp_path / "no_teacher.ckpt"
    torch.save(checkpoint, no_teacher)
    assert "use which=student" in error(["knn", f"ckpt={no_teacher}", *FAST])

    # Unlabeled images (no class folders) cannot be evaluated.
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    Image.new("RGB", (32, 32)).save(unlabeled / "a.png")
    err = error(["knn", f"ckpt={ckpt}", f"data.train_root={unlabeled}", f"data.val_root={unlabeled}", *FAST])
    assert "data.train_root" in err and "class folders" in err


def test_help_lists_the_keys(capsys):
    assert cli.main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("ckpt:", "which:", "train_root:", "val_root:", "k:", "temperature:", "lrs:", "heldout_fraction:",
                "shots:", "seeds:", "cache_dir:", "logger:"):
        assert key in out, key
