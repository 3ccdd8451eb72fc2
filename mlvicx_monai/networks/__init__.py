"""Networks: context-bottleneck block, MLVICX encoder (ResNet18), multi-level aggregator, expanders, the
siamese model, the downstream classifier and U-Net, and their one file format (:mod:`.artifacts`).

Importing this package registers the MLVICX backbones with MONAI's ``FlexibleUNet``.
"""

from .aggregator import MultiLevelAggregator, resize_pool_matrix
from .artifacts import ArtifactError, ArtifactInfo, ModelKind, load_model, save_model
from .cbam import ContextBottleneck
from .classifier import CXRClassifier, build_classifier, resolve_encoder
from .encoder import LEVEL_CHANNELS, LEVEL_STRIDES, LEVELS, EncoderOutput, MLVICXEncoder
from .expander import Expander
from .mlvicx import MLVICX, build_model
from .unet import MLVICX_BACKBONE, MLVICXFlexEncoder, MLVICXUNet, build_segmenter, register_mlvicx_backbone

__all__ = [
    "ArtifactError",
    "ArtifactInfo",
    "ModelKind",
    "MLVICX_BACKBONE",
    "CXRClassifier",
    "MLVICXFlexEncoder",
    "MLVICXUNet",
    "build_classifier",
    "build_segmenter",
    "load_model",
    "register_mlvicx_backbone",
    "resolve_encoder",
    "save_model",
    "LEVELS",
    "LEVEL_CHANNELS",
    "LEVEL_STRIDES",
    "ContextBottleneck",
    "EncoderOutput",
    "Expander",
    "MLVICX",
    "MLVICXEncoder",
    "MultiLevelAggregator",
    "build_model",
    "resize_pool_matrix",
]
