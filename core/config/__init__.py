"""The run vocabulary, at the bottom of the house: what one run is (its data, model and
training sections, the choices they take) and its id. Everything above imports it from
here; it imports nothing of theoryscope's but itself.
"""

from theoryscope.core.config.fields import Choice, FieldError, is_finite, is_hashed, require
from theoryscope.core.config.run import RUN_SECTIONS, RunSpec
from theoryscope.core.config.sections import (
    REAL_DATA, Activation, DataKind, DataSpec, DType, Experiment, Init, LabelCorruption, MatmulPrecision, ModelKind,
    ModelSpec, Objective, Optimizer, Overparam, RealData, TrainSpec, shares_inputs,
)

__all__ = [
    "REAL_DATA", "RUN_SECTIONS", "Activation", "Choice", "DType", "DataKind", "DataSpec", "Experiment", "FieldError",
    "Init", "LabelCorruption", "MatmulPrecision", "ModelKind", "ModelSpec", "Objective", "Optimizer", "Overparam", "RealData", "RunSpec",
    "TrainSpec", "is_finite", "is_hashed", "require", "shares_inputs",
]
