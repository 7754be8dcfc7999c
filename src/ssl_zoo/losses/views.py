"""The views of a multi-crop batch, one tensor per view, as the DINO-family losses take them.

A loss that receives one tensor per view needs no view counts: ``len`` gives them, and
which views are the global crops (the ones the teacher also saw) is said by the field
they are in, not by a row convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Views:
    """Per-view tensors of the same B images, each (B, ...).

    Attributes:
        global_: the global crops, in the teacher's view order (global view i is the crop
            of teacher view i).
        local: the local crops (student only); empty without local crops.
    """

    global_: Sequence[Tensor]
    local: Sequence[Tensor] = ()
    # The (V*B, ...) tensor the views were split from, set by ``from_rows`` only: lets
    # ``stacked`` return a view of it instead of a copy.
    _rows: Tensor | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_rows(cls, rows: Tensor, n_images: int, n_global: int) -> Views:
        """Split view-major rows ``(V*B, ...)``, the ``n_global`` global views first, into
        views of ``n_images`` (B) rows each (no copy: the views are slices of ``rows``)."""
        if n_images < 1 or rows.shape[0] % n_images or rows.shape[0] < n_global * n_images:
            raise ValueError(
                f"rows must be (V*B, ...) with B={n_images} and V >= n_global={n_global}, "
                f"got {tuple(rows.shape)}"
            )
        views = rows.split(n_images)
        return cls(global_=views[:n_global], local=views[n_global:], _rows=rows)

    @property
    def all(self) -> list[Tensor]:
        """Global views then local views."""
        return [*self.global_, *self.local]

    def stacked(self, name: str = "views") -> Tensor:
        """(V, B, ...): every view, globals first. From ``from_rows`` a view of the rows (no
        copy, and the gradient reaches them without a concatenation), else a stack.
        ``name`` names the views in the error when they are not of one shape."""
        views = self.all
        if not views:
            raise ValueError(f"{name} holds no view")
        if any(v.shape != views[0].shape for v in views):
            raise ValueError(
                f"{name} must all have one shape, got {[tuple(v.shape) for v in views]}"
            )
        if self._rows is not None:
            return self._rows.reshape(len(views), *views[0].shape)
        return torch.stack(views)
