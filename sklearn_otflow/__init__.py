"""sklearn-otflow: the OT-Flow continuous normalizing flow as a scikit-learn density estimator."""

from . import theory
from ._alpha_path import alpha_path
from ._conditional import OTFlowConditionalDensity
from ._dynamics import flow, odeint_rk4
from ._estimator import OTFlowDensity
from ._loss import Objective, log_prob, objective
from ._potential import Potential

__version__ = "0.1.0.dev0"

__all__ = [
    "OTFlowDensity",
    "OTFlowConditionalDensity",
    "alpha_path",
    "theory",
    "Objective",
    "Potential",
    "flow",
    "log_prob",
    "objective",
    "odeint_rk4",
]
