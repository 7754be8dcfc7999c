"""ssl_zoo: BYOL, DINO and DINOv2 as Lightning modules over Hydra configs."""

__version__ = "0.1.0"
