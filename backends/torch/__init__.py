"""PyTorch adapter of pdmp: binds the NumPy core's policies and ranking to torch.

* :class:`Modulator`: per-modality gradient (``mode="grad"``) or learning-rate (``mode="lr"``)
  modulation through autograd / optimizer hooks; works with AMP, DDP, ``torch.compile`` and gradient
  accumulation.
* :func:`concat_head_logits`, :func:`sum_head_logits`: per-modality logits for OGM-GE.
* :func:`rank_unimodal`: stage 1, unimodal training on a budget (the user's optimizer and LR schedule,
  one or several training seeds), returning the core's ``Ranking`` or, with ``return_details=True``,
  a :class:`UnimodalReport` (trained models, validation logits, per-epoch :class:`TrainingCurve`).
* :func:`dependency_shares`: each modality's dependency share of a fused model over a dataset.
* :func:`training_log`: the values to log (coefficients, dependency shares) in a hand-written loop.
* :func:`training_step`: one forward/backward/step that is right for every shipped policy (what each
  reads: decomposed logits, mono-modal responses, unimodal heads), so a loop need not branch.
* :class:`Rebalancer`: G-Blending, PMR, Diagnosing & Re-learning and MLA (``pdmp.rebalancing``), which
  change the loss, the parameters or the step rather than gradients; its step is ``training_step``'s too.
* :class:`~pdmp.backends.torch.lightning.PDMPCallback`: the same in a Lightning ``Trainer``; imported
  on first use, so this package does not need lightning.

Every decision about coefficients or rankings is made by :mod:`pdmp` (NumPy); nothing here computes one.
"""

from .dependency import dependency_shares
from .heads import concat_head_logits, sum_head_logits
from .logs import training_log
from .modulator import Mode, Modulator
from .ranking import TrainingCurve, UnimodalReport, rank_unimodal
from .rebalancing import Rebalancer
from .robustness import apply_modality_dropout, evaluate_robustness
from .training import StepOutput, training_step

__all__ = ["Mode", "Modulator", "concat_head_logits", "rank_unimodal", "sum_head_logits"]
__all__ += ["TrainingCurve", "UnimodalReport", "dependency_shares"]
__all__ += ["Rebalancer", "StepOutput", "training_step"]
__all__ += ["apply_modality_dropout", "evaluate_robustness"]
__all__ += ["training_log"]  # not PDMPCallback: a star import must not need lightning


def __getattr__(name: str) -> object:
    # PDMPCallback is imported on first use: importing this package must not require lightning.
    if name == "PDMPCallback":
        from .lightning import PDMPCallback

        return PDMPCallback
    if name == "RebalanceCallback":
        from .lightning import RebalanceCallback

        return RebalanceCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
