"""fcnseg: Fully Convolutional Networks for semantic segmentation."""

from fcnseg.models import BACKBONES, MODELS, build_model

__version__ = "0.1.0"
__all__ = ["BACKBONES", "MODELS", "build_model", "__version__"]
