"""fcnseg: Fully Convolutional Networks for semantic segmentation.

``fcnseg.build_model("fcn8s", backbone="vgg16", num_classes=21)`` builds a net (``net.spec``, a
:class:`fcnseg.ModelSpec`, says what it is; ``fcnseg.build_model(spec)`` builds it again);
``fcnseg.load("model.pth").predict("photo.jpg")`` segments an image with a trained checkpoint, and
``fcnseg.load(NAME)`` with a net shipped inside fcnseg (:mod:`fcnseg.pretrained`).
Every error a user can fix is a :class:`fcnseg.FcnsegError` (see :mod:`fcnseg.errors`).
"""

from fcnseg.errors import FcnsegError

__version__ = "0.1.0"
__all__ = ["BACKBONES", "MODELS", "FcnsegError", "ModelSpec", "Segmenter", "build_model", "load", "__version__"]


def __getattr__(name: str):
    # torch, PIL and the data readers load on first use, not at `import fcnseg`: the command line imports this
    # package before it can answer Ctrl+C (fcnseg.cli), and `import fcnseg.errors` stays light.
    if name in ("BACKBONES", "MODELS", "ModelSpec", "build_model"):
        from fcnseg import models

        return getattr(models, name)
    if name in ("load", "Segmenter"):
        from fcnseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'fcnseg' has no attribute {name!r}")
