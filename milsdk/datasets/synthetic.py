"""Synthetic MIL datasets: bags built from a labelled dataset (ToyDataset) and the algorithmic unit tests.

Every dataset is reproducible from its ``seed`` alone: randomness comes from local ``numpy.random.Generator``
objects (never the global RNG), bag ``i`` is drawn from its own generator seeded by ``(seed, split, i)`` so bags
can be read in any order, and positive and negative bags are interleaved at random (not positives first).
Bags are ``TensorDict`` with ``X`` (N, D) float32, ``Y`` () int64 and ``y_inst`` (N,) int64.

The unit-test datasets follow "Reproducibility in Multiple Instance Learning: A Case For Algorithmic Unit Tests"
(Raff & Holt, NeurIPS 2023): Algorithm 1 (SCStandard), 2 (MCStandard), 3 (FalseFrequency). In those, ``y_inst``
marks instances drawn from a concept distribution (1), background (0) and poison (-1); the bag label is not
always the max of ``y_inst`` (that is the point of the tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from tensordict import TensorDict

from milsdk.errors import DatasetError

__all__ = [
    "FalseFrequencyMILDataset",
    "MCStandardMILDataset",
    "SCStandardMILDataset",
    "ShiftedMeanMILDataset",
    "ToyDataset",
    "normal_pdf",
]


def normal_pdf(x: torch.Tensor | float, mu: float = 0.0, sigma: float = 1.0) -> torch.Tensor:
    r"""Density of :math:`\mathcal{N}(\mu, \sigma^2)` at ``x``, elementwise.

    Args:
        x: points, any shape (a number or a tensor).
        mu: mean.
        sigma: standard deviation (> 0).

    Returns:
        the densities, shaped like ``x``.
    """
    x = torch.as_tensor(x, dtype=torch.get_default_dtype())
    return torch.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2.0 * math.pi))


def _normal_distr(mean: float, std: float, D: int) -> torch.distributions.Normal:
    """The D-dimensional N(mean, std^2 I) the numpy sampler draws from, as the reference's attribute."""
    return torch.distributions.Normal(torch.full((D,), float(mean)), torch.full((D,), float(std)))


def _check_seed(seed: int) -> int:
    if int(seed) < 0:
        raise DatasetError(f"seed must be >= 0, got {seed}")
    return int(seed)


def _bag_size_range(bag_size: int | Sequence[int]) -> tuple[int, int]:
    lo, hi = (bag_size, bag_size) if isinstance(bag_size, (int, np.integer)) else tuple(bag_size)
    if not 1 <= int(lo) <= int(hi):
        raise DatasetError(f"bag_size must be an int >= 1 or (lo, hi) with 1 <= lo <= hi, got {bag_size}")
    return int(lo), int(hi)


def _shuffled_labels(num_bags: int, n_pos: int, rng: np.random.Generator) -> np.ndarray:
    """``n_pos`` ones and ``num_bags - n_pos`` zeros in random order (int64)."""
    labels = np.zeros(num_bags, dtype=np.int64)
    labels[:n_pos] = 1
    rng.shuffle(labels)
    return labels


def _to_bag(X: np.ndarray, Y: int, y_inst: np.ndarray, **extra: torch.Tensor) -> TensorDict:
    return TensorDict(
        {
            "X": torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)),
            "Y": torch.tensor(int(Y), dtype=torch.int64),
            "y_inst": torch.from_numpy(np.ascontiguousarray(y_inst, dtype=np.int64)),
            **extra,
        },
        batch_size=[],
    )


class _Cycler:
    """Draw indices without replacement from a pool, reshuffling it each time it runs out."""

    def __init__(self, pool: np.ndarray, rng: np.random.Generator) -> None:
        self.pool, self.rng = pool, rng
        self.queue = rng.permutation(pool)
        self.pos = 0

    def take(self, m: int) -> np.ndarray:
        out = []
        while m > 0:
            if self.pos == len(self.queue):
                self.queue, self.pos = self.rng.permutation(self.pool), 0
            chunk = self.queue[self.pos : self.pos + m]
            out.append(chunk)
            self.pos += len(chunk)
            m -= len(chunk)
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


class ToyDataset(torch.utils.data.Dataset):
    """MIL bags built from any labelled dataset (e.g. MNIST): a bag is positive iff it holds an object instance.

    An instance is an *object* (y_inst 1) when its label is in ``obj_labels``. ``int(num_bags * pos_class_prob)``
    bags are positive; a positive bag of size n holds k object instances, k uniform on [1, max(1, n // 2)], the
    rest non-objects; a negative bag holds non-objects only. Instances are drawn without replacement from
    shuffled pools that are reshuffled when used up (so they repeat only after a full pass). Instances are
    shuffled inside each bag and bags are in random order.

    Bags: ``X`` (n, *F) float32, ``Y`` () int64, ``y_inst`` (n,) int64.

    Args:
        data: (M, *F) instances.
        labels: (M,) instance labels.
        num_bags: number of bags.
        obj_labels: the labels that make an instance an object.
        bag_size: a fixed size, or (lo, hi) for sizes uniform on [lo, hi] (both included).
        pos_class_prob: fraction of positive bags.
        seed: makes the dataset reproducible.
    """

    def __init__(
        self,
        data: np.ndarray,
        labels: np.ndarray,
        num_bags: int,
        obj_labels: Sequence[int],
        bag_size: int | tuple[int, int],
        pos_class_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data = np.asarray(data)
        labels = np.asarray(labels).reshape(-1)
        if self.data.ndim < 1 or len(self.data) != len(labels):
            raise DatasetError(f"data has {len(self.data)} rows but labels has {len(labels)}")
        if num_bags < 1:
            raise DatasetError(f"num_bags must be >= 1, got {num_bags}")
        if not 0.0 <= pos_class_prob <= 1.0:
            raise DatasetError(f"pos_class_prob must be in [0, 1], got {pos_class_prob}")
        self.labels = labels
        self.num_bags = int(num_bags)
        self.pos_class_prob = pos_class_prob
        self.obj_labels = list(obj_labels)
        self.bag_size = _bag_size_range(bag_size)
        self.seed = _check_seed(seed)
        self.is_obj = np.isin(labels, self.obj_labels)
        rng = np.random.default_rng(self.seed)
        n_pos = int(num_bags * pos_class_prob)
        self._labels = _shuffled_labels(int(num_bags), n_pos, rng)
        objects, others = np.flatnonzero(self.is_obj), np.flatnonzero(~self.is_obj)
        sizes = rng.integers(self.bag_size[0], self.bag_size[1] + 1, size=len(self._labels))
        n_obj = np.where(self._labels == 1, [int(rng.integers(1, max(1, s // 2) + 1)) for s in sizes], 0)
        if n_obj.sum() > 0 and len(objects) == 0:
            raise DatasetError(f"labels: no instance has a label in obj_labels={self.obj_labels}")
        if (sizes - n_obj).sum() > 0 and len(others) == 0:
            raise DatasetError(f"labels: every instance has a label in obj_labels={self.obj_labels}")
        obj_queue, other_queue = _Cycler(objects, rng), _Cycler(others, rng)
        self._bags = [
            rng.permutation(np.concatenate([obj_queue.take(int(k)), other_queue.take(int(s - k))]))
            for s, k in zip(sizes, n_obj)
        ]

    def __len__(self) -> int:
        return len(self._bags)

    def _check_index(self, index: int) -> int:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {len(self)} bags")
        return index % len(self)

    def get_bag_indices(self, index: int) -> np.ndarray:
        """(n,) row indices into ``data`` of the instances of bag ``index``, in bag order."""
        return self._bags[self._check_index(index)].copy()

    def get_bag_labels(self) -> np.ndarray:
        """(num_bags,) int64 bag labels in dataset order."""
        return self._labels.copy()

    def __getitem__(self, index: int) -> TensorDict:
        index = self._check_index(index)
        rows = self._bags[index]
        return _to_bag(self.data[rows], self._labels[index], self.is_obj[rows])


class _GeneratedMILDataset(torch.utils.data.Dataset):
    """Base of the unit-test datasets: fixed, shuffled bag labels; bag ``i`` drawn on demand from its own RNG.

    The subclasses expose torchmil's attributes ``num_bags``, ``pos_distr`` (the concept distributions),
    ``neg_distr`` (background) and ``poisoning`` as ``torch.distributions.Normal`` of size D: they describe the
    distributions; the bags themselves are drawn with the seeded numpy generators, so they are reproducible.
    """

    def __init__(self, num_bags: int, pos_class_prob: float, train: bool, seed: int) -> None:
        super().__init__()
        if num_bags < 1:
            raise DatasetError(f"num_bags must be >= 1, got {num_bags}")
        if not 0.0 <= pos_class_prob <= 1.0:
            raise DatasetError(f"pos_class_prob must be in [0, 1], got {pos_class_prob}")
        self.num_bags = int(num_bags)
        self.pos_class_prob = pos_class_prob
        self.train = train
        self.seed = _check_seed(seed)
        # Train and test draw from different streams, so the same seed does not give the test set train's bags.
        self._stream = [self.seed, int(train)]
        n_pos = int(self.num_bags * pos_class_prob)
        self._labels = _shuffled_labels(self.num_bags, n_pos, np.random.default_rng(self._stream))

    def __len__(self) -> int:
        return self.num_bags

    def __getitem__(self, index: int) -> TensorDict:
        index = int(index)
        if not -self.num_bags <= index < self.num_bags:
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {self.num_bags} bags")
        index %= self.num_bags
        rng = np.random.default_rng([*self._stream, index])
        Y = int(self._labels[index])
        X, y_inst = self._sample_bag(rng, Y)
        perm = rng.permutation(len(X))  # no instance position gives the label away
        return _to_bag(X[perm], Y, y_inst[perm])

    def get_bag_labels(self) -> np.ndarray:
        """(num_bags,) int64 bag labels in dataset order."""
        return self._labels.copy()

    def _sample_bag(self, rng: np.random.Generator, Y: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


def _normal(rng: np.random.Generator, mean: float, std: float, n: int, D: int) -> np.ndarray:
    return rng.normal(mean, std, size=(n, D))


class FalseFrequencyMILDataset(_GeneratedMILDataset):
    """Algorithm 3 (false frequency): only *how many* concept instances a bag has separates the classes.

    Positive bag: one instance from N(2, 0.1^2) and one from N(3, 0.1^2) (y_inst 1), plus 1-9 from N(0, 1).
    Negative bag: instances from N(2, 0.1^2) (y_inst 1), 1 of them in train and 35-44 in test, plus 1-9 from
    N(0, 1). Each instance is a D-vector with independent components.

    Args:
        D: features per instance.
        num_bags: number of bags; ``int(num_bags * pos_class_prob)`` are positive.
        pos_class_prob: fraction of positive bags.
        train: the train (True) or test (False) distribution.
        seed: makes the dataset reproducible.
    """

    def __init__(self, D: int, num_bags: int, pos_class_prob: float = 0.5, train: bool = True, seed: int = 0):
        self.D = int(D)
        super().__init__(num_bags, pos_class_prob, train, seed)
        self.pos_distr = [_normal_distr(2.0, 0.1, self.D), _normal_distr(3.0, 0.1, self.D)]
        self.neg_distr = _normal_distr(0.0, 1.0, self.D)
        self.poisoning = _normal_distr(-10.0, 0.1, self.D)

    def _sample_bag(self, rng: np.random.Generator, Y: int) -> tuple[np.ndarray, np.ndarray]:
        if Y == 1:
            concept = np.concatenate([_normal(rng, 2.0, 0.1, 1, self.D), _normal(rng, 3.0, 0.1, 1, self.D)])
        else:
            n_concept = 1 if self.train else int(rng.integers(35, 45))
            concept = _normal(rng, 2.0, 0.1, n_concept, self.D)
        background = _normal(rng, 0.0, 1.0, int(rng.integers(1, 10)), self.D)
        y_inst = np.concatenate([np.ones(len(concept)), np.zeros(len(background))])
        return np.concatenate([concept, background]), y_inst


class _PoisonedMILDataset(_GeneratedMILDataset):
    """Adds the poison instance N(-10, 0.1^2), y_inst -1, to negative bags in train and positive bags in test:
    a model that learns the poison as a negative cue fails at test time."""

    D: int

    def _poison(self, rng: np.random.Generator, Y: int) -> tuple[np.ndarray, np.ndarray]:
        if (Y == 0) == self.train:
            return _normal(rng, -10.0, 0.1, 1, self.D), np.full(1, -1)
        return np.empty((0, self.D)), np.empty(0)

    def _with_poison(
        self, rng: np.random.Generator, Y: int, X: np.ndarray, y_inst: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        X_p, y_p = self._poison(rng, Y)
        return np.concatenate([X_p, X]), np.concatenate([y_p, y_inst])


class MCStandardMILDataset(_PoisonedMILDataset):
    """Algorithm 2 (multi-concept standard): a bag is positive iff it holds instances of *both* concepts.

    Positive bag: 2k instances (k = 1-3) alternating N(2, 0.1^2) and N(3, 0.1^2) (y_inst 1), plus 1-9 from
    N(0, 1). Negative bag: one instance of one concept (y_inst 1) plus 1-9 from N(0, 1). Poison: see
    ``_PoisonedMILDataset``.

    Args:
        D: features per instance.
        num_bags: number of bags; ``int(num_bags * pos_class_prob)`` are positive.
        pos_class_prob: fraction of positive bags.
        train: the train (True) or test (False) distribution.
        seed: makes the dataset reproducible.
    """

    def __init__(self, D: int, num_bags: int, pos_class_prob: float = 0.5, train: bool = True, seed: int = 0):
        self.D = int(D)
        super().__init__(num_bags, pos_class_prob, train, seed)
        self.pos_distr = [_normal_distr(2.0, 0.1, self.D), _normal_distr(3.0, 0.1, self.D)]
        self.neg_distr = _normal_distr(0.0, 1.0, self.D)
        self.poisoning = _normal_distr(-10.0, 0.1, self.D)

    def _sample_bag(self, rng: np.random.Generator, Y: int) -> tuple[np.ndarray, np.ndarray]:
        if Y == 1:
            k = int(rng.integers(1, 4))
            means = np.tile([2.0, 3.0], k)
        else:
            means = np.array([2.0 if rng.integers(2) == 0 else 3.0])
        concept = rng.normal(means[:, None], 0.1, size=(len(means), self.D))
        background = _normal(rng, 0.0, 1.0, int(rng.integers(1, 10)), self.D)
        y_inst = np.concatenate([np.ones(len(concept)), np.zeros(len(background))])
        return self._with_poison(rng, Y, np.concatenate([concept, background]), y_inst)


class SCStandardMILDataset(_PoisonedMILDataset):
    """Algorithm 1 (single-concept standard): a bag is positive iff it holds a concept instance.

    Positive bag: 1-3 instances (y_inst 1), each from N(0, 3^2) or N(1, 1) at random, plus exactly ``B``
    background instances from N(0, 1). Negative bag: ``B`` background instances. Poison: see
    ``_PoisonedMILDataset``.

    Args:
        D: features per instance.
        num_bags: number of bags; ``int(num_bags * pos_class_prob)`` are positive.
        B: background instances per bag (>= 1).
        pos_class_prob: fraction of positive bags.
        train: the train (True) or test (False) distribution.
        seed: makes the dataset reproducible.
    """

    def __init__(
        self, D: int, num_bags: int, B: int, pos_class_prob: float = 0.5, train: bool = True, seed: int = 0
    ):
        if B < 1:
            raise DatasetError(f"B (background instances per bag) must be >= 1, got {B}")
        self.D = int(D)
        self.B = int(B)
        super().__init__(num_bags, pos_class_prob, train, seed)
        self.pos_distr = [_normal_distr(0.0, 3.0, self.D), _normal_distr(1.0, 1.0, self.D)]
        self.neg_distr = _normal_distr(0.0, 1.0, self.D)
        self.neg_dist = self.neg_distr  # torchmil's name for it in this dataset
        self.poisoning = _normal_distr(-10.0, 0.1, self.D)

    def _sample_bag(self, rng: np.random.Generator, Y: int) -> tuple[np.ndarray, np.ndarray]:
        background = _normal(rng, 0.0, 1.0, self.B, self.D)
        if Y == 1:
            n = int(rng.integers(1, 4))
            wide = rng.integers(2, size=n).astype(bool)  # N(0, 3^2) where True, N(1, 1) otherwise
            concept = rng.normal(
                np.where(wide, 0.0, 1.0)[:, None], np.where(wide, 3.0, 1.0)[:, None], size=(n, self.D)
            )
        else:
            concept = np.empty((0, self.D))
        y_inst = np.concatenate([np.ones(len(concept)), np.zeros(self.B)])
        return self._with_poison(rng, Y, np.concatenate([concept, background]), y_inst)


class ShiftedMeanMILDataset(torch.utils.data.Dataset):
    r"""Shifted-mean bags (arXiv 2510.25759): a positive bag has one contiguous run of ``R`` shifted instances.

    Bag sizes are uniform on [S_low, S_high]; features are N(mu, sigma^2) of size M; Y ~ Bernoulli(p_y1). In a
    positive bag, instances s..s+R-1 (s uniform) have their first K features shifted by +Delta (y_inst 1).
    Instance order is meaningful here (the run is contiguous), so instances are not shuffled.

    Bags: ``X`` (S, M) float32, ``Y`` () int64, ``y_inst`` (S,) int64, ``bag_size`` () int64.

    Args:
        N: number of bags.
        R: length of the shifted run (<= S_low).
        S_low: smallest bag size.
        S_high: largest bag size (inclusive).
        K: shifted features (<= M).
        M: features per instance.
        p_y1: P(Y = 1).
        Delta: the shift.
        mu: feature mean.
        sigma: feature standard deviation.
        seed: makes the dataset reproducible.
    """

    def __init__(
        self,
        N: int = 100,
        R: int = 3,
        S_low: int = 15,
        S_high: int = 45,
        K: int = 1,
        M: int = 768,
        p_y1: float = 0.5,
        Delta: float = 1.0,
        mu: float = 0.0,
        sigma: float = 1.0,
        seed: int = 42,
    ) -> None:
        super().__init__()
        if not 1 <= R <= S_low <= S_high:
            raise DatasetError(f"need 1 <= R <= S_low <= S_high, got R={R}, S_low={S_low}, S_high={S_high}")
        if not 1 <= K <= M:
            raise DatasetError(f"need 1 <= K <= M, got K={K}, M={M}")
        if N < 1 or sigma <= 0 or not 0.0 <= p_y1 <= 1.0:
            raise DatasetError(
                f"need N >= 1, sigma > 0 and 0 <= p_y1 <= 1, got N={N}, sigma={sigma}, p_y1={p_y1}"
            )
        self.N, self.R, self.K, self.M = int(N), int(R), int(K), int(M)
        self.S_low, self.S_high = int(S_low), int(S_high)
        self.p_y1, self.Delta, self.mu, self.sigma = p_y1, Delta, mu, sigma
        self.seed = _check_seed(seed)
        # Labels and sizes up front (cheap), features per bag on demand (N * S * M floats can be large).
        rng = np.random.default_rng([self.seed, 0])
        self._labels = (rng.random(self.N) < p_y1).astype(np.int64)
        self._sizes = rng.integers(self.S_low, self.S_high + 1, size=self.N)
        self._starts = np.array([rng.integers(0, s - self.R + 1) for s in self._sizes], dtype=np.int64)

    def __len__(self) -> int:
        return self.N

    def _features(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, index])
        X = rng.normal(self.mu, self.sigma, size=(int(self._sizes[index]), self.M))
        if self._labels[index] == 1:
            s = int(self._starts[index])
            X[s : s + self.R, : self.K] += self.Delta
        return X

    def __getitem__(self, index: int) -> TensorDict:
        index = int(index)
        if not -self.N <= index < self.N:
            raise IndexError(f"ShiftedMeanMILDataset: index {index} out of range for {self.N} bags")
        index %= self.N
        size = int(self._sizes[index])
        y_inst = np.zeros(size, dtype=np.int64)
        if self._labels[index] == 1:
            y_inst[self._starts[index] : self._starts[index] + self.R] = 1
        return _to_bag(
            self._features(index), self._labels[index], y_inst, bag_size=torch.tensor(size, dtype=torch.int64)
        )

    def get_bag_labels(self) -> np.ndarray:
        """(N,) int64 bag labels in dataset order."""
        return self._labels.copy()

    def p_y1_given_h(self, index: int) -> float:
        r"""Bayes-optimal P(Y = 1 | bag ``index``), marginalising the run start s over its S - R + 1 positions.

        .. math:: \log \Lambda_s = \sum_{i=s}^{s+R-1} \sum_{k<K} \frac{\Delta (x_{ik} - \mu) - \Delta^2/2}{\sigma^2},
                  \quad P = \frac{p \bar\Lambda}{p \bar\Lambda + 1 - p},\ \bar\Lambda = \operatorname{mean}_s \Lambda_s
        """
        X = self._features(int(index) % self.N)
        per_inst = ((self.Delta * (X[:, : self.K] - self.mu) - self.Delta**2 / 2) / self.sigma**2).sum(axis=1)
        window = np.convolve(per_inst, np.ones(self.R), mode="valid")  # log Lambda_s for every start s
        log_lr = np.logaddexp.reduce(window) - np.log(len(window))
        if self.p_y1 in (0.0, 1.0):
            return float(self.p_y1)
        logit = log_lr + np.log(self.p_y1) - np.log1p(-self.p_y1)
        # Stable sigmoid: exp of a large positive number would overflow.
        return float(1.0 / (1.0 + np.exp(-logit)) if logit >= 0 else np.exp(logit) / (1.0 + np.exp(logit)))
