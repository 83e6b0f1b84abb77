"""fcnseg: Fully Convolutional Networks for semantic segmentation."""

__version__ = "0.1.0"
