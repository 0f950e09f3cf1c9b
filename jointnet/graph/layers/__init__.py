"""Layer kinds: the protocol and registry (`base`) and the built-in kinds (`kinds`)."""

from jointnet.graph.layers.base import (
    ALIASES,
    CHANNEL_RULES,
    RUNTIME,
    SPECS,
    Layer,
    ParamInfo,
    infer_spec,
    register_spec,
    spec_from_dict,
    spec_to_dict,
)
from jointnet.graph.layers.kinds import (
    Add,
    AvgPool2d,
    BatchNorm,
    Concat,
    Conv2d,
    Dropout,
    Flatten,
    Gate,
    GlobalAvgPool,
    Head,
    Identity,
    Input,
    Linear,
    MaxPool2d,
    ReLU,
    Zero,
)
from jointnet.graph.layers import factorized  # noqa: F401  (TFConv2d, DFConv2d: LASEM's generated convs)

__all__ = [
    "Layer", "ParamInfo", "SPECS", "ALIASES", "CHANNEL_RULES", "RUNTIME", "register_spec",
    "spec_from_dict", "spec_to_dict", "infer_spec", "Input", "Linear", "Head", "Conv2d",
    "BatchNorm", "ReLU", "MaxPool2d", "AvgPool2d", "GlobalAvgPool", "Flatten", "Dropout",
    "Identity", "Zero", "Add", "Concat", "Gate",
]
