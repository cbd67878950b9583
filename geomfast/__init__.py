"""geomfast: representation geometry (RankMe, α-ReQ, …) of language models across training.

Core: GramAccumulator (streaming covariance, CPU and CUDA), eigvalsh / spectrum /
singular_values, backends(). Metrics: rankme, alpha_req, geometry and friends. Drop-in
sklearn-style PCA. Phases of training. The model pipeline (trace, store, plot) lives in the
submodules sweep / store / plot and behind the `geomfast` command.
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
from .linalg import backends, eigvalsh, singular_values, singular_values_of, spectra, spectrum
from .metrics import (AlphaReqResult, DegenerateSpectrumError, SpectrumWarning, alpha_req, condition_number,
                      effective_rank, geometry, geometry_of_spectra, participation_ratio, rankme, spectral_entropy,
                      stable_rank)
from .pca import PCA
from .phases import Phase, PhaseResult, Transition, detect_phases, detect_transitions, phases_from_store

NonFiniteError = _core.NonFiniteError

__all__ = [
    "__version__",
    # core
    "GramAccumulator", "NonFiniteError", "backends", "eigvalsh", "singular_values", "singular_values_of", "spectra",
    "spectrum",
    # metrics
    "AlphaReqResult", "DegenerateSpectrumError", "SpectrumWarning", "alpha_req", "condition_number",
    "effective_rank", "geometry", "geometry_of_spectra", "participation_ratio", "rankme", "spectral_entropy", "stable_rank",
    # drop-in PCA and phases
    "PCA", "Phase", "PhaseResult", "Transition", "detect_phases", "detect_transitions", "phases_from_store",
]
