"""The shipped release bundle: what every device runs by default must be valid, signed, full INT8 and sensible."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
from skimage import data

from edge.device.config import RELEASE_KEYS, SHIPPED_BUNDLE
from edge.device.pipeline import Analyzer
from edge.device.sources import Frame
from edge.model.bundle import load_bundle
from edge.model.classifier import EmotionClassifier
from edge.model.detect import make_detector
from edge.model.litert import non_int8_tensors
from edge.model.trust import load_trusted_keys, verify_bundle_files


def test_shipped_bundle_is_signed_by_the_release_key_and_full_int8():
    bundle = load_bundle(SHIPPED_BUNDLE)
    assert verify_bundle_files(SHIPPED_BUNDLE, load_trusted_keys([RELEASE_KEYS]))
    assert non_int8_tensors(bundle.model_bytes) == []
    manifest = bundle.manifest
    assert manifest["training"]["dataset"] == "fer2013" and manifest["input"]["shape"] == [1, 48, 48, 1]
    parity = manifest["metrics"]["parity"]
    assert parity["qat_int8"]["agreement_with_float"] > 0.9 and manifest["metrics"]["validation_accuracy"] > 0.6
    assert manifest["golden"]["inputs"] and len(manifest["golden"]["probabilities"]) == 6  # what every device compares
    assert verify_bundle_files(SHIPPED_BUNDLE, load_trusted_keys([RELEASE_KEYS])) == "7756efc5677aafca"


def test_shipped_model_sees_the_astronaut_smile():
    """Eileen Collins smiles in scikit-image's public-domain portrait: the whole device path must say so."""
    image = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    classifier = EmotionClassifier(load_bundle(SHIPPED_BUNDLE))
    analysis = Analyzer(make_detector("blazeface"), classifier, max_faces=5)(Frame(0, 0.0, image))
    assert len(analysis.faces) == 1
    assert classifier.bundle.classes[int(np.argmax(analysis.probs[0]))] == "happy", analysis.probs[0]


def test_edge_check_uses_the_shipped_bundle_by_default():
    done = subprocess.run([sys.executable, "-m", "edge.cli", "check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and f"{SHIPPED_BUNDLE}: ok - model fer2013-resnet18-cbam@" in done.stdout, done.stderr
