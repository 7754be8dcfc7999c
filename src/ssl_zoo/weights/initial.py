"""A configured backbone's initial weights: ``backbone.init_from`` / ``init_from_key``.

``Backbone`` takes only what builds the network; the two keys that choose a weights file
sit in the same config node (``backbone.init_from=PATH``) and are read here, into the
built backbone, so that ``models/`` never reads files. The loading rules (official DINO /
DINOv2 files, ``ssl-zoo export`` files, training checkpoints; strict keys and shapes) are
in :mod:`ssl_zoo.weights.official`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, open_dict
from torch import nn

from ssl_zoo.weights.official import load_backbone_weights

#: Keys of the backbone node that are not Backbone arguments.
INIT_KEYS = ("init_from", "init_from_key")


def architecture_node(node: DictConfig) -> DictConfig:
    """The backbone node (``cfg.backbone``) without :data:`INIT_KEYS`: what instantiates
    the Backbone. A copy that keeps its parent, so interpolations still resolve."""
    node = copy.deepcopy(node)
    with open_dict(node):
        for key in INIT_KEYS:
            node.pop(key, None)
    return node


def load_initial_weights(backbone: nn.Module, node: DictConfig | Mapping[str, Any]) -> None:
    """Load ``node.init_from`` (if set) into ``backbone``, an ssl_zoo Backbone built from
    ``node``: strictly, the network ``node.init_from_key`` (``teacher`` or ``student``) of
    a training checkpoint, or the file's backbone. A mask token in the file initialises
    the iBOT mask token when the method enables one."""
    path = node.get("init_from")
    if not path:
        return
    mask_token = load_backbone_weights(backbone, path, node.get("init_from_key", "teacher"))
    if mask_token is not None:
        backbone.init_mask_token(mask_token)
