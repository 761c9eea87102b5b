"""pdmp: Performance-Dominant Modality Prioritization for multimodal training.

The core (this package) is NumPy only: ranking modalities, coefficient policies, diagnostics and
metrics. Framework adapters live in :mod:`pdmp.backends.torch` and :mod:`pdmp.backends.keras` and are
imported only when asked for.
"""

from pdmp.diagnostics import Dependency, dependency, modality_scores, softmax
from pdmp.metrics import accuracy, macro_f1
from pdmp.policies import (
    OGM_NOISE_EPS,
    OGMGE,
    PDMP,
    Clock,
    CoefficientPolicy,
    Modulation,
    NoModulation,
    policy_from_config,
)
from pdmp.ranking import Ranking, RankingFileError, RankingWarning, rank_modalities

__version__ = "0.1.0"

__all__ = [
    "OGMGE",
    "OGM_NOISE_EPS",
    "PDMP",
    "Clock",
    "CoefficientPolicy",
    "Dependency",
    "Modulation",
    "NoModulation",
    "Ranking",
    "RankingFileError",
    "RankingWarning",
    "__version__",
    "accuracy",
    "dependency",
    "macro_f1",
    "modality_scores",
    "policy_from_config",
    "rank_modalities",
    "softmax",
]
