"""The model library: what runs a model bundle on a face, with no device and no TensorFlow.

Preprocessing (the one path shared by training, evaluation and the device), face detectors,
the LiteRT interpreter, bundles and their signatures, the emotion classifier. It imports nothing
from :mod:`edge.device`, :mod:`edge.protocol`, ``tools`` or ``trainer``.
"""
