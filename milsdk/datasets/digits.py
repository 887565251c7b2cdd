"""DigitsMILDataset: the demo dataset, bags of real 8x8 digit images bundled with scikit-learn.

A bag is positive iff it holds an image of ``target_digit`` (the MNIST-bags task of Ilse et al., 2018, on
``sklearn.datasets.load_digits``: 1,797 images, 64 features scaled to [0, 1]). scikit-learn is the optional
``demo`` extra and is imported only when the dataset is built.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from tensordict import TensorDict

from milsdk.datasets.patch_grid import square_grid
from milsdk.datasets.processed import DEFAULT_BAG_KEYS, sparse_bag_adj
from milsdk.datasets.synthetic import ToyDataset
from milsdk.errors import DatasetError

__all__ = ["DigitsMILDataset", "load_digit_images"]

# The train/test split of the images does not depend on a dataset's seed, so any train and any test dataset are
# disjoint. 30% of the images are test images.
_SPLIT_SEED = 1797
TEST_FRACTION = 0.3


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError(
            "DigitsMILDataset needs scikit-learn (the 'demo' extra): pip install scikit-learn"
        ) from None
    digits = load_digits()
    images = (np.asarray(digits.data, dtype=np.float32) / 16.0).clip(0.0, 1.0)
    images.setflags(write=False)
    targets = np.asarray(digits.target, dtype=np.int64)
    targets.setflags(write=False)
    return images, targets


def load_digit_images(train: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The train or test images of the fixed split.

    Returns:
        images: (M, 64) float32 in [0, 1] (reshape to (M, 8, 8) to view them); digits: (M,) int64;
        source_index: (M,) int64 row of each image in ``sklearn.datasets.load_digits()``.
    """
    images, targets = _load_digits()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(images))
    n_test = round(TEST_FRACTION * len(images))
    index = np.sort(order[n_test:] if train else order[:n_test])
    return images[index], targets[index], index


class DigitsMILDataset(ToyDataset):
    """Bags of 8x8 digit images; ``Y`` = 1 iff the bag holds ``target_digit``.

    Built with ``ToyDataset`` rules (a positive bag holds 1..n//2 target images). Each instance also gets a grid
    position: a bag's instances are laid out row by row on a near-square grid (``ceil(sqrt(n))`` columns), so
    heatmaps and models that use ``coords`` / ``adj`` work on the demo as on slides.

    Bags: ``X`` (n, 64) float32, ``Y`` () int64, ``y_inst`` (n,) int64 (1 = the target digit),
    ``adj`` (n, n) sparse float32 (8-neighbour grid, normalised), ``coords`` (n, 2) int64.

    Args:
        num_bags: number of bags.
        bag_size: a fixed size, or (lo, hi) for sizes uniform on [lo, hi].
        target_digit: the digit (0-9) that makes a bag positive.
        pos_class_prob: fraction of positive bags.
        train: draw from the train images (True) or the disjoint test images (False).
        bag_keys: keys of each bag; None means all five.
        seed: makes the bags reproducible.

    Example:
        >>> train = DigitsMILDataset(num_bags=200, bag_size=(5, 15), target_digit=9, train=True, seed=0)
        >>> train[0]["X"].shape[1]
        64
    """

    def __init__(
        self,
        num_bags: int = 200,
        bag_size: int | tuple[int, int] = (5, 15),
        target_digit: int = 9,
        pos_class_prob: float = 0.5,
        train: bool = True,
        bag_keys: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        if int(target_digit) not in range(10):
            raise DatasetError(f"target_digit must be 0-9, got {target_digit}")
        keys = list(DEFAULT_BAG_KEYS if bag_keys is None else bag_keys)
        unknown = [k for k in keys if k not in DEFAULT_BAG_KEYS]
        if unknown:
            raise DatasetError(
                f"bag_keys: unknown key(s) {unknown}, expected some of {list(DEFAULT_BAG_KEYS)}"
            )
        self.bag_keys = keys
        self.target_digit = int(target_digit)
        self.train = train
        images, digits, self.source_index = load_digit_images(train)
        self.digits = digits
        super().__init__(images, digits, num_bags, [self.target_digit], bag_size, pos_class_prob, seed)

    def __getitem__(self, index: int) -> TensorDict:
        bag = super().__getitem__(index)
        coords = square_grid(bag["X"].shape[0])
        out: dict[str, torch.Tensor] = {}
        for key in self.bag_keys:
            if key == "coords":
                out[key] = torch.from_numpy(coords)
            elif key == "adj":
                out[key] = sparse_bag_adj(coords, dist_thr=1.5, norm_adj=True)
            else:
                out[key] = bag[key]
        return TensorDict(out, batch_size=[])
