"""The paper presets' augmentation statistics against their reference code (issue #21, 4b).

Each preset's transform is built from its composed config (the objects a run builds), and
its random choices are drawn many times through ``MultiCropTransform.draw_sample``, the
call that ``__call__`` renders (checked below): no pixels, so thousands of samples take a
second. Per view (global crop 1, global crop 2, local crops) the measured frequencies of
flip, colour jitter, grayscale, blur and solarisation must match the reference within 5
binomial standard deviations (exactly, for probabilities 0 and 1).

Reference values and their source lines (dino at 7c446df, dinov2 at b8931f7,
deepmind-research byol/utils/augmentations.py at 8457046):

| preset             | view     | flip | jitter | gray | blur | solar. | source                                  |
|--------------------|----------|------|--------|------|------|--------|-----------------------------------------|
| dino_vits16_in1k   | global 1 | 0.5  | 0.8    | 0.2  | 1.0  | 0.0    | main_dino.py:422-427, 435-440           |
|                    | global 2 | 0.5  | 0.8    | 0.2  | 0.1  | 0.2    | main_dino.py:442-448; utils.py:46, 65   |
|                    | local    | 0.5  | 0.8    | 0.2  | 0.5  | 0.0    | main_dino.py:451-456                    |
| dinov2_vitl16_in1k | global 1 | 0.5  | 0.8    | 0.2  | 0.0  | 0.0    | augmentations.py:49, 65-69, 73;         |
|                    | global 2 | 0.5  | 0.8    | 0.2  | 0.9  | 0.2    |   :75-80; transforms.py:19-21 (RandomApply |
|                    | local    | 0.5  | 0.8    | 0.2  | 0.5  | 0.0    |   gets 1 - p), :58, 82                  |
| byol_r50_in1k      | view 1   | 0.5  | 0.8    | 0.2  | 1.0  | 0.0    | augmentations.py:29-50, 352             |
|                    | view 2   | 0.5  | 0.8    | 0.2  | 0.1  | 0.2    | augmentations.py:52-65                  |
"""

from __future__ import annotations

import math

import hydra
import pytest
import torch

from ssl_zoo.data import kernels
from ssl_zoo.data.transforms import MultiCropTransform
from tests.conftest import compose_config

pytestmark = pytest.mark.usefixtures("one_thread")

OPS = ("flip", "jitter", "gray", "blur", "solarize")
COMMON = {"flip": 0.5, "jitter": 0.8, "gray": 0.2}
REFERENCE = {
    "dino_vits16_in1k": {
        "global 1": {**COMMON, "blur": 1.0, "solarize": 0.0},
        "global 2": {**COMMON, "blur": 0.1, "solarize": 0.2},
        "local": {**COMMON, "blur": 0.5, "solarize": 0.0},
    },
    "dinov2_vitl16_in1k": {
        "global 1": {**COMMON, "blur": 0.0, "solarize": 0.0},
        "global 2": {**COMMON, "blur": 0.9, "solarize": 0.2},
        "local": {**COMMON, "blur": 0.5, "solarize": 0.0},
    },
    "byol_r50_in1k": {
        "global 1": {**COMMON, "blur": 1.0, "solarize": 0.0},
        "global 2": {**COMMON, "blur": 0.1, "solarize": 0.2},
    },
}
# Colour jitter strengths (dino main_dino.py:424, dinov2 augmentations.py:66, byol
# augmentations.py:33-36), the blur's sigma range (dino utils.py:40, dinov2
# transforms.py:17, byol augmentations.py:48-49), the solarisation threshold in 8-bit
# levels (PIL ImageOps.solarize and RandomSolarize(threshold=128) invert >= 128; byol
# inverts >= 0.5 of [0, 1] floats, augmentations.py:437) and the blur kernel (dino
# utils.py:50-54 PIL radius; dinov2 transforms.py:20 kernel_size=9; byol
# augmentations.py:423, 135-136 side / 10, zero-padded).
JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}
SETTINGS = {
    "dino_vits16_in1k": {"solarize_threshold": 128, "blur_kernel": "pil"},
    "dinov2_vitl16_in1k": {"solarize_threshold": 128, "blur_kernel": 9},
    "byol_r50_in1k": {"solarize_threshold": 127.5, "blur_kernel": "byol"},
}
SAMPLES = 4000
SIGMAS = 5.0


def preset_transform(tmp_path, name: str, *overrides: str) -> MultiCropTransform:
    cfg = compose_config([f"experiment={name}", *overrides], tmp_path)
    return hydra.utils.instantiate(cfg.augmentation.transform)


def measure(transform: MultiCropTransform, samples: int = SAMPLES, seed: int = 0) -> dict:
    """{view: {op: (times applied, views seen)}} over ``samples`` draws of the transform."""
    torch.manual_seed(seed)
    counts = {}
    for _ in range(samples):
        sample = transform.draw_sample()
        views = [(f"global {i + 1}", ops) for i, ops in enumerate(sample["global_crops"])]
        views += [("local", ops) for ops in sample["local_crops"]]
        for view, ops in views:
            applied = {
                "flip": ops.flip,
                "jitter": bool(ops.jitter_order),
                "gray": ops.gray,
                "blur": ops.blur_sigma is not None,
                "solarize": ops.solarize,
            }
            seen = counts.setdefault(view, {op: [0, 0] for op in OPS})
            for op, done in applied.items():
                seen[op][0] += done
                seen[op][1] += 1
    return counts


def mismatches(counts: dict, reference: dict) -> list[str]:
    """Ops whose frequency is outside SIGMAS binomial standard deviations of the reference."""
    found = []
    assert set(counts) == set(reference), f"views {sorted(counts)}, reference {sorted(reference)}"
    for view, expected in reference.items():
        for op, p in expected.items():
            hits, n = counts[view][op]
            tolerance = SIGMAS * math.sqrt(p * (1 - p) / n)
            if abs(hits / n - p) > tolerance:
                found.append(f"{view} {op}: {hits / n:.4f} over {n} views, reference {p}")
    return found


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_preset_augmentation_frequencies_match_the_reference(tmp_path, name):
    counts = measure(preset_transform(tmp_path, name))
    assert not mismatches(counts, REFERENCE[name])


def test_the_check_catches_dinov2s_paper_blur(tmp_path):
    """The paper's 1.0 / 0.1 (ssl_zoo before issue #21) is not what dinov2's code runs."""
    transform = preset_transform(tmp_path, "dinov2_vitl16_in1k", "augmentation.dinov2_blur=paper")
    found = mismatches(measure(transform, samples=1000), REFERENCE["dinov2_vitl16_in1k"])
    assert [line.split(":")[0] for line in found] == ["global 1 blur", "global 2 blur"]
    paper = {**REFERENCE["dinov2_vitl16_in1k"]}
    paper["global 1"] = {**paper["global 1"], "blur": 1.0}
    paper["global 2"] = {**paper["global 2"], "blur": 0.1}
    assert not mismatches(measure(transform, samples=1000), paper)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_preset_strengths_are_the_references(tmp_path, name):
    cfg = compose_config([f"experiment={name}"], tmp_path).augmentation.transform
    assert {key: cfg[key] for key in JITTER} == JITTER
    assert {key: cfg[key] for key in SETTINGS[name]} == SETTINGS[name]
    transform = hydra.utils.instantiate(cfg)
    assert transform.jitter == tuple(JITTER.values())
    assert transform.blur_sigma == (0.1, 2.0)
    assert transform.solarize_threshold == SETTINGS[name]["solarize_threshold"]
    assert transform.blur_kernel == SETTINGS[name]["blur_kernel"]
    # The drawn factors span torchvision's ranges (1 - s, 1 + s), hue (-h, h): the
    # strengths reach the draws, per op.
    torch.manual_seed(1)
    factors = [
        ops.jitter_factors
        for _ in range(300)
        for ops in transform.draw_sample()["global_crops"]
        if ops.jitter_order
    ]
    for op, strength in enumerate(JITTER.values()):
        values = torch.tensor([f[op] for f in factors])
        low, high = (-strength, strength) if op == kernels.HUE else (1 - strength, 1 + strength)
        assert low <= values.min() < low + 0.05 * strength and high - 0.05 * strength < values.max() <= high


def test_call_renders_the_drawn_sample(tmp_path):
    """__call__ consumes the random stream as draw_sample does and renders those choices,
    so the frequencies measured above are the pipeline's."""
    transform = preset_transform(tmp_path, "dino_vits16_in1k", "augmentation.transform.n_local=2")
    image = torch.randint(0, 256, (3, 150, 200), dtype=torch.uint8)
    torch.manual_seed(3)
    sample = transform.draw_sample()
    expected = transform.render(image, sample)
    torch.manual_seed(3)
    out = transform(image)
    for key in ("global_crops", "local_crops"):
        assert len(out[key]) == len(expected[key])
        for got, want in zip(out[key], expected[key], strict=True):
            assert torch.equal(got, want)


def test_a_bad_dinov2_blur_names_the_switch_and_its_values(tmp_path):
    with pytest.raises(Exception, match=r"augmentation.dinov2_blur must be one of reference_code, paper; got 'intent'"):
        preset_transform(tmp_path, "dinov2_vitl16_in1k", "augmentation.dinov2_blur=intent")
