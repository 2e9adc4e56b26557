"""What a dataset is to the registry (search/train/data.py): its DatasetInfo, and the rule of what keeps its labels
(the flips and turns of its test-time views and its augmentation, its largest rotation). Below the registry, so
that own data's infos (search/train/owninfo.py) are built without an import cycle."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from search.errors import SearchError
from search.train import owndata
from search.train.readers import Arrays

MULTI_LABEL = "multi-label, binary-class"  # medmnist's name of the one task with a 0/1 target per label
# Test-time augmentation: the label-preserving views a prediction averages (search/train/augment.py makes them).
# Each is a subset of the next, so a dataset allows a prefix of this tuple (DatasetInfo.tta).
TTA = ("none", "flip", "dihedral")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    num_classes: int
    task: str  # medmnist's task names: multi-class, binary-class, multi-label, binary-class, ordinal-regression
    read: Callable[..., Arrays]  # (root, download, size) -> arrays
    sizes: tuple[int, ...] = (28,)  # image sides in pixels that exist as files
    labels: tuple[str, ...] | None = None  # the class names (MedMNIST's); None: the class numbers
    bundled: bool = False  # its data ship with the installed packages: nothing to download or check beforehand
    # The most test-time augmentation that keeps every label (TTA: none < flip < dihedral); the rule is in
    # docs/finalists.md: digits and organ CT slices (left and right organs) have none, images with an up but no
    # left and right (chest X-ray, OCT, breast ultrasound) a mirror, orientation-free ones (tissue, cells, skin,
    # fundus) the dihedral group.
    tta: str = "none"

    @property
    def multi_label(self) -> bool:
        return is_multi_label(self.task)

    def check_tta(self, tta: str, symmetry: str | None = None) -> None:
        """The one check of a test-time augmentation against the views that keep this dataset's labels (own data:
        the config's ``symmetry``)."""
        allowed = TTA[:TTA.index(augment_limits(self, symmetry).symmetry) + 1]
        if tta in TTA and tta not in allowed:
            raise SearchError(f"tta {tta!r} can change the labels of {self.name} (its images have an orientation); "
                              f"valid for {self.name}: {', '.join(allowed)}")

    def check_size(self, size: int) -> None:
        """The one check of an image size: those that exist for the dataset (every one an architecture takes)."""
        if isinstance(size, bool) or size not in self.sizes:
            raise SearchError(f"size {size!r} does not exist for {self.name}; valid: "
                              f"{', '.join(map(str, self.sizes))} (pixels)")


@dataclass(frozen=True)
class Limits:
    """What keeps a dataset's labels under augmentation: its flips and quarter turns (none, flip or dihedral: those
    of its test-time views) and the largest rotation in degrees (search/train/augment_ops.py keeps to both)."""
    symmetry: str = "dihedral"
    max_rotation: float = 180.0


# The rotation a dataset without the dihedral symmetry keeps its labels under: a digit or a chest X-ray turned by
# 15 degrees is still itself (MNIST's own augmentation studies rotate by up to 15; X-rays are taken within a few).
SMALL_ROTATION = 15.0


def augment_limits(info: DatasetInfo, symmetry: str | None = None) -> Limits:
    """The dataset's rule: the registry's tta for the shipped datasets; the config's ``symmetry`` for own data
    (default none: nothing says a flip keeps its labels)."""
    own = owndata.is_own(info.name)
    if symmetry is not None and not own:
        raise SearchError(f"symmetry is set for own data only; {info.name}'s flips and turns are the registry's: "
                          f"{info.tta}")
    kept = (symmetry or "none") if own else info.tta
    return Limits(kept, 180.0 if kept == "dihedral" else SMALL_ROTATION)


def is_multi_label(task: str) -> bool:
    """Whether ``task`` (medmnist's task name) has a 0/1 target per label rather than one class per image."""
    return task == MULTI_LABEL
