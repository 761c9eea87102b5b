"""pdmp: Performance-Dominant Modality Prioritization for multimodal training.

The core (this package) is NumPy only: ranking modalities, coefficient policies, diagnostics and
metrics. Framework adapters live in :mod:`pdmp.backends.torch` and :mod:`pdmp.backends.keras` and are
imported only when asked for.
"""

from pdmp import rebalancing as rebalancing
from pdmp.adaptive import AdaptivePDMP
from pdmp.baselines import AGM, ARL, InfoReg, MMPareto, mono_modal_responses, shapley_responses
from pdmp.compare import Candidate, Study, StudyError, compare, default_candidates, run_environment
from pdmp.controls import InversePDMP, UniformScaling
from pdmp.diagnostics import Dependency, dependency, modality_scores, softmax
from pdmp.ensemble import report_ensemble, unimodal_ensemble
from pdmp.metrics import accuracy, macro_f1
from pdmp.mslr import MSLR
from pdmp.policies import (
    OGM_NOISE_EPS,
    OGMGE,
    PDMP,
    Clock,
    CoefficientPolicy,
    Modulation,
    NoModulation,
    policy_from_config,
    register_policy,
)
from pdmp.ranking import (
    Ranking,
    RankingFileError,
    RankingWarning,
    TrainingCurve,
    UnderOptimization,
    UnimodalReport,
    combine_rankings,
    rank_modalities,
    under_optimization,
)
from pdmp.rebalancing import MLA, PMR, DiagnosingRelearning, GBlending, RebalancingPolicy
from pdmp.recipes import Recipe, recipe
from pdmp.robustness import Condition, ModalityDropout, RobustnessTable, robustness_conditions
from pdmp.search import SearchResult, gamma_grid, search_gammas
from pdmp.stats import PairedDifference, paired_difference
from pdmp.transforms import GradientPolicy, GradientTransform, apply_transform, gradient_statistics, logit_statistics

__version__ = "0.1.0"

__all__ = [
    "AGM",
    "ARL",
    "MLA",
    "MSLR",
    "OGMGE",
    "OGM_NOISE_EPS",
    "PDMP",
    "PMR",
    "AdaptivePDMP",
    "Candidate",
    "Clock",
    "CoefficientPolicy",
    "Condition",
    "Dependency",
    "DiagnosingRelearning",
    "GBlending",
    "GradientPolicy",
    "GradientTransform",
    "InfoReg",
    "InversePDMP",
    "MMPareto",
    "ModalityDropout",
    "Modulation",
    "NoModulation",
    "PairedDifference",
    "Ranking",
    "RankingFileError",
    "RankingWarning",
    "RebalancingPolicy",
    "Recipe",
    "RobustnessTable",
    "SearchResult",
    "Study",
    "StudyError",
    "TrainingCurve",
    "UnderOptimization",
    "UniformScaling",
    "UnimodalReport",
    "__version__",
    "accuracy",
    "apply_transform",
    "combine_rankings",
    "compare",
    "default_candidates",
    "dependency",
    "gamma_grid",
    "gradient_statistics",
    "logit_statistics",
    "macro_f1",
    "modality_scores",
    "mono_modal_responses",
    "paired_difference",
    "policy_from_config",
    "rank_modalities",
    "recipe",
    "register_policy",
    "report_ensemble",
    "robustness_conditions",
    "run_environment",
    "search_gammas",
    "shapley_responses",
    "softmax",
    "under_optimization",
    "unimodal_ensemble",
]
