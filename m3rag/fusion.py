"""Score fusion: per-path normalisation, weighted sum and weighted reciprocal rank fusion.

Pure functions on arrays: no I/O, no models. The retriever scores every candidate on every path
and hands the per-path score arrays (aligned on the candidates) to `fuse`.

* ``weighted``: ``sum_p w_p * norm(s_p) / sum_p w_p``. With ``normalization="none"`` and the
  default weights (dense 0.4, lexical 0.2, ColBERT 0.4) this is exactly BGE-M3's
  ``compute_score`` "colbert+sparse+dense" combination: the raw scores weighted and divided by
  the weight sum, as the reference does. ``minmax`` maps each path to ``[0, 1]`` over the
  candidates; ``zscore`` to mean 0, deviation 1 -- use one of them when mixing in BM25, whose
  scores are unbounded.
* ``rrf``: weighted reciprocal rank fusion, ``sum_p w_p / (k + rank_p)`` (Cormack et al., 2009),
  ranks starting at 1 with ties sharing the best rank; a candidate a path did not score
  contributes nothing for that path. The weights are honoured (many peers ignore them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "NORMALIZATIONS",
    "PATHS",
    "FusionConfig",
    "fuse",
    "normalize",
    "ranks",
    "rrf",
    "weighted_sum",
]

PATHS = ("dense", "lexical", "colbert", "bm25")
"""The retrieval paths: BGE-M3's three heads and BM25 over the text."""
NORMALIZATIONS = ("none", "minmax", "zscore")

Method = Literal["weighted", "rrf"]
Normalization = Literal["none", "minmax", "zscore"]
FloatArray = npt.NDArray[np.float64]


def check_normalization(value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is one of `NORMALIZATIONS`."""
    if value not in NORMALIZATIONS:
        msg = f"normalization must be one of {list(NORMALIZATIONS)}, got {value!r}"
        raise ValueError(msg)


_DEFAULT_WEIGHTS = MappingProxyType({"dense": 0.4, "lexical": 0.2, "colbert": 0.4})


@dataclass(frozen=True)
class FusionConfig:
    """How per-path scores become one score; validates itself.

    Args:
        method: ``"weighted"`` (default) or ``"rrf"``.
        weights: Path -> weight, over `PATHS`. Non-negative, not all zero; stored
            normalised to sum 1 (scaling all weights changes nothing). Paths left out weigh 0.
        normalization: For ``weighted``: ``"none"`` (raw scores, the BGE-M3 formula),
            ``"minmax"`` or ``"zscore"``.
        rrf_k: The ``k`` of reciprocal rank fusion (60 in the original paper).

    Raises:
        ValueError: Unknown path (the message lists the valid ones), negative or non-finite
            weight, all weights zero, unknown method or normalisation, ``rrf_k`` negative or
            not finite.

    Example:
        ```python
        FusionConfig(weights={"dense": 1, "bm25": 1}, normalization="zscore")
        FusionConfig(method="rrf", weights={"dense": 2, "lexical": 1}, rrf_k=60)
        ```
    """

    method: Method = "weighted"
    weights: Mapping[str, float] = field(default_factory=lambda: dict(_DEFAULT_WEIGHTS))
    normalization: Normalization = "none"
    rrf_k: float = 60.0

    def __post_init__(self) -> None:
        if self.method not in ("weighted", "rrf"):
            msg = f"method must be 'weighted' or 'rrf', got {self.method!r}"
            raise ValueError(msg)
        check_normalization(self.normalization)
        rrf_k = _finite_float(self.rrf_k)
        if rrf_k is None or rrf_k < 0:
            msg = (
                "rrf_k must be a finite non-negative number (60 is usual), got "
                f"{_brief(self.rrf_k)}"
            )
            raise ValueError(msg)
        if not isinstance(self.weights, Mapping):
            msg = f"weights must be a dict of path -> weight, got {type(self.weights).__name__}"
            raise TypeError(msg)
        unknown = sorted(str(p) for p in self.weights if p not in PATHS)
        if unknown:
            msg = f"unknown path(s) {unknown} in weights; valid paths are {list(PATHS)}"
            raise ValueError(msg)
        given: dict[str, float] = {}
        for path, w in self.weights.items():
            value = _finite_float(w)
            if value is None or value < 0:
                msg = f"weight of {path!r} must be a finite non-negative number, got {_brief(w)}"
                raise ValueError(msg)
            given[path] = value
        total = sum(given.values())
        if total <= 0:
            msg = f"weights are all zero; give at least one of {list(PATHS)} a positive weight"
            raise ValueError(msg)
        if not math.isfinite(total):  # finite weights whose sum overflows: scale them first
            top = max(given.values())
            given = {p: w / top for p, w in given.items()}
            total = sum(given.values())
        normalised = {p: given[p] / total for p in PATHS if given.get(p, 0) / total > 0}
        object.__setattr__(self, "weights", MappingProxyType(normalised))

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths with a positive weight, in `PATHS` order."""
        return tuple(self.weights)


def _finite_float(value: object) -> float | None:
    """``value`` as a finite float, or ``None`` if it is not a finite real number.

    An int too large for a float (``10**400``) is not finite either; a bool is not a number.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        out = float(value)
    except OverflowError:
        return None
    return out if math.isfinite(out) else None


def _brief(value: object) -> str:
    """``repr(value)``, but an int too large for a float as its size (its repr may not exist)."""
    if isinstance(value, int) and not isinstance(value, bool) and _finite_float(value) is None:
        digits = int(abs(value).bit_length() * math.log10(2)) + 1
        return f"an integer of about {digits} digits, too large for a float"
    return repr(value)


def normalize(scores: npt.ArrayLike, method: Normalization) -> FloatArray:
    """Normalise one path's scores over the candidates.

    ``none`` returns them as they are; ``minmax`` maps to ``[0, 1]`` (a constant list maps to
    all 1.0: every candidate is as good as the best); ``zscore`` to mean 0 and unit deviation (a
    constant list maps to all 0.0). NaN marks a missing score and stays NaN.
    """
    s: FloatArray = np.array(scores, dtype=np.float64)
    if method == "none" or s.size == 0:
        return s
    present = ~np.isnan(s)
    out = np.full_like(s, np.nan)
    if not present.any():
        return out
    vals = s[present]
    if method == "minmax":
        lo, hi = vals.min(), vals.max()
        out[present] = 1.0 if hi == lo else (vals - lo) / (hi - lo)
    elif method == "zscore":
        # test constancy exactly: the float std of a constant list need not be exactly 0
        sd = vals.std()
        out[present] = 0.0 if vals.max() == vals.min() or sd == 0 else (vals - vals.mean()) / sd
    else:
        check_normalization(method)  # not a known one: raises
    return out


def ranks(scores: npt.ArrayLike) -> FloatArray:
    """1-based ranks, best score first; ties share the best rank; NaN (missing) stays NaN."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.full(s.shape, np.nan)
    present = np.flatnonzero(~np.isnan(s))
    if present.size == 0:
        return out
    vals = s[present]
    # rank = 1 + number of strictly better scores ("min" / competition ranking)
    sorted_desc = np.sort(vals)[::-1]
    better = np.searchsorted(-sorted_desc, -vals, side="left")
    out[present] = better + 1.0
    return out


def weighted_sum(
    path_scores: Mapping[str, npt.ArrayLike],
    weights: Mapping[str, float],
    normalization: Normalization = "none",
) -> FloatArray:
    """``sum_p w_p * norm(s_p) / sum_p w_p``; a missing (NaN) score counts as 0 for that path."""
    n = _size(path_scores)
    total = np.zeros(n, dtype=np.float64)
    weight_sum = sum(w for p, w in weights.items() if w > 0)
    if n == 0 or weight_sum <= 0:
        return total
    for path, w in weights.items():
        if w <= 0 or path not in path_scores:
            continue
        s = normalize(path_scores[path], normalization)
        total += w * np.nan_to_num(s, nan=0.0)
    return total / weight_sum


def rrf(
    path_scores: Mapping[str, npt.ArrayLike], weights: Mapping[str, float], k: float = 60.0
) -> FloatArray:
    """Weighted reciprocal rank fusion: ``sum_p w_p / (k + rank_p)``."""
    n = _size(path_scores)
    total = np.zeros(n, dtype=np.float64)
    for path, w in weights.items():
        if w <= 0 or path not in path_scores:
            continue
        r = ranks(path_scores[path])
        total += np.where(np.isnan(r), 0.0, w / (k + np.nan_to_num(r, nan=1.0)))
    return total


def fuse(path_scores: Mapping[str, npt.ArrayLike], config: FusionConfig) -> FloatArray:
    """The fused score of each candidate under ``config``."""
    if config.method == "rrf":
        return rrf(path_scores, config.weights, config.rrf_k)
    return weighted_sum(path_scores, config.weights, config.normalization)


def _size(path_scores: Mapping[str, npt.ArrayLike]) -> int:
    sizes = {len(np.asarray(v)) for v in path_scores.values()}
    if len(sizes) > 1:
        msg = f"all paths must score the same candidates; got lengths {sorted(sizes)}"
        raise ValueError(msg)
    return sizes.pop() if sizes else 0
