"""ssl_zoo: BYOL, DINO, DINOv2 and SimCLR as Lightning modules over Hydra configs."""

__version__ = "0.1.0"
