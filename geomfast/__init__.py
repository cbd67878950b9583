"""geomfast: representation geometry (RankMe, α-ReQ, …) of language models across training.

Core API (see README): GramAccumulator, eigvalsh, spectrum, singular_values, rankme, alpha_req,
geometry, backends.
"""
from ._version import __version__

try:
    from . import _core
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "geomfast's native core (geomfast._core) could not be imported: " + str(e) +
        ". Install with `pip install .` (it builds the C++ core), or for development "
        "`cmake -S . -B build/dev -G Ninja -DGEOMFAST_INPLACE=ON && cmake --build build/dev`.") from e

from .accumulator import GramAccumulator
from .linalg import backends, eigvalsh, singular_values, spectrum

NonFiniteError = _core.NonFiniteError

__all__ = ["__version__", "GramAccumulator", "NonFiniteError", "backends", "eigvalsh", "singular_values", "spectrum"]

try:  # metrics are written by a teammate in parallel; exported once present
    from .metrics import (AlphaReqResult, alpha_req, condition_number, effective_rank, geometry,  # noqa: F401
                          participation_ratio, rankme, spectral_entropy, stable_rank)

    __all__ += ["AlphaReqResult", "alpha_req", "condition_number", "effective_rank", "geometry",
                "participation_ratio", "rankme", "spectral_entropy", "stable_rank"]
except ImportError:  # pragma: no cover
    pass
