"""Networks: context-bottleneck block, MLVICX encoder (ResNet18), multi-level aggregator, expanders, the
siamese model, the exported encoder (``encoder.pt``), and the downstream classifier and U-Net.

Importing this package registers the MLVICX backbones with MONAI's ``FlexibleUNet``.
"""

from .aggregator import MultiLevelAggregator, resize_pool_matrix
from .cbam import ContextBottleneck
from .encoder import LEVEL_CHANNELS, LEVEL_STRIDES, LEVELS, EncoderOutput, MLVICXEncoder
from .expander import Expander
from .mlvicx import MLVICX, build_model
from .pretrained import ENCODER_FORMAT, PretrainedEncoderError, build_encoder, encoder_config, load_encoder, save_encoder
from .classifier import CXRClassifier, build_classifier, resolve_encoder
from .unet import MLVICX_BACKBONE, MLVICXFlexEncoder, MLVICXUNet, build_segmenter, register_mlvicx_backbone

__all__ = [
    "ENCODER_FORMAT",
    "MLVICX_BACKBONE",
    "CXRClassifier",
    "MLVICXFlexEncoder",
    "MLVICXUNet",
    "PretrainedEncoderError",
    "build_classifier",
    "build_encoder",
    "build_segmenter",
    "encoder_config",
    "load_encoder",
    "register_mlvicx_backbone",
    "resolve_encoder",
    "save_encoder",
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
