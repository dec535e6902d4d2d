"""Edge runtime for facial-expression recognition.

Everything under ``edge`` runs without TensorFlow: numpy, OpenCV and LiteRT only.
The preprocessing in :mod:`edge.model.preprocess` is the single path shared by training,
evaluation and the device.
"""

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""The seven classes in FER2013 order; every dataset is mapped onto this label space."""

DEFAULT_BUNDLE_NAME = "fer2013-resnet18-cbam"
"""The release model, shipped in the repository's ``models/`` folder; the runtime's default bundle."""
