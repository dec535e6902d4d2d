"""Dataset loaders: FER2013, CK+ and JAFFE in every layout they are distributed in.

Every loader returns a :class:`FaceDataset` in FER2013's seven-class label space with raw
grayscale images; :func:`prepare_images` then runs the shared edge preprocessing on them.

Layouts understood by :func:`load_dataset` (it says which one it found):

- FER2013: Kaggle's ``fer2013.csv`` (emotion, pixels, Usage); Kaggle's folder layout
  ``train/<class>/Training_*.jpg`` and ``test/<class>/{PublicTest,PrivateTest}_*.jpg``;
  ``fer2013.npz`` (see ``shared/data/SOURCES.md``).
- CK+: the CK+48 folder layout ``<class>/S005_001_00000011.png``; ``ckplus48.npz``.
- JAFFE: the original ``KA.AN1.39.tiff`` files (subject and expression from the name); ``jaffe.npz``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge import CLASS_NAMES
from edge.errors import UserError
from edge.model.detect import FaceDetector
from edge.model.preprocess import PreprocessSpec, face_input

DATASETS = ("fer2013", "ckplus", "jaffe")
DATA_ENV = "TRAINER_DATA"
NPZ_FILES = {"fer2013": "fer2013.npz", "ckplus": "ckplus48.npz", "jaffe": "jaffe.npz"}
CONTEMPT_CHOICES = ("drop", "disgust", "neutral")

# Every spelling of a class name found in the three datasets -> FER2013 index.
_SYNONYMS = {
    "angry": 0, "anger": 0, "an": 0,
    "disgust": 1, "di": 1,
    "fear": 2, "fe": 2,
    "happy": 3, "happiness": 3, "ha": 3,
    "sad": 4, "sadness": 4, "sa": 4,
    "surprise": 5, "surprised": 5, "su": 5,
    "neutral": 6, "ne": 6,
}
_USAGES = ("Training", "PublicTest", "PrivateTest")


@dataclass
class FaceDataset:
    """Images (uint8 grayscale, any size) with labels in FER2013 order."""

    name: str
    images: list[np.ndarray]
    labels: np.ndarray
    subjects: np.ndarray
    """Subject id per image ('' where the dataset has none), for subject-independent folds."""
    usage: np.ndarray
    """FER2013's official split per image ('' for other datasets)."""
    source: str
    """What was loaded, in words: the layout found and the path."""
    cropped: bool
    """True when images are already face crops (FER2013, CK+48); JAFFE is full frames."""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> "FaceDataset":
        keep = np.asarray(keep)
        index = np.flatnonzero(keep) if keep.dtype == bool else keep
        return replace(self, images=[self.images[i] for i in index], labels=self.labels[index],
                       subjects=self.subjects[index], usage=self.usage[index])


def label_of(name: str, contempt: str = "drop") -> int | None:
    """FER2013 index of a class name; contempt maps by the ``contempt`` option (None = drop)."""
    key = name.strip().lower()
    if key in ("contempt", "co"):
        return None if contempt == "drop" else CLASS_NAMES.index(contempt)
    if key not in _SYNONYMS:
        raise UserError(f"unknown expression class {name!r}; expected one of {list(CLASS_NAMES)}")
    return _SYNONYMS[key]


def resolve_data_path(dataset: str, data: str | os.PathLike | None) -> Path:
    """The path to load: ``--data``, else ``$TRAINER_DATA`` (a folder holding the .npz archives)."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if data is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise UserError(f"no data path: pass --data PATH or set {DATA_ENV} to a folder with {NPZ_FILES[dataset]}")
        data = env
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"data path {path} does not exist: pass --data with a {dataset} CSV, folder or .npz")
    if path.is_dir() and (path / NPZ_FILES[dataset]).is_file():
        path = path / NPZ_FILES[dataset]
    return path


def load_dataset(dataset: str, data: str | os.PathLike | None = None, contempt: str = "drop") -> FaceDataset:
    """Load ``dataset`` from whatever layout ``data`` holds (see the module docstring)."""
    if contempt not in CONTEMPT_CHOICES:
        raise UserError(f"--contempt must be one of {', '.join(CONTEMPT_CHOICES)}, not {contempt!r}")
    path = resolve_data_path(dataset, data)
    try:
        if path.suffix == ".npz":
            return _load_npz(dataset, path, contempt)
        if dataset == "fer2013" and path.suffix == ".csv":
            return _load_fer_csv(path)
        if path.is_dir():
            loaders = {"fer2013": _load_fer_folders, "ckplus": _load_ck_folders, "jaffe": _load_jaffe_folder}
            return loaders[dataset](path, contempt)
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot read {dataset} from {path}: {exc}") from None
    raise UserError(f"{path} is not a {dataset} layout this trainer reads (CSV, folders or .npz)")


def _dataset(name, images, labels, subjects, usage, source, cropped) -> FaceDataset:
    if not len(labels):
        raise UserError(f"no {name} images found in {source}")
    return FaceDataset(name, list(images), np.asarray(labels, dtype=np.int64), np.asarray(subjects, dtype=str),
                       np.asarray(usage, dtype=str), source, cropped)


def _load_npz(dataset: str, path: Path, contempt: str) -> FaceDataset:
    with np.load(path) as archive:
        names = [str(n) for n in archive["class_names"]]
        mapped = [label_of(names[i], contempt) for i in archive["labels"]]
        keep = np.array([m is not None for m in mapped])
        labels = np.array([m for m in mapped if m is not None])
        images = archive["images"][keep]
        n = len(labels)
        if dataset == "fer2013":
            usage = np.asarray(archive["split_names"])[archive["split"][keep]]
            subjects = np.full(n, "")
        else:
            usage = np.full(n, "")
            subjects = archive["subjects"][keep]
    return _dataset(dataset, images, labels, subjects, usage, f"NumPy archive {path}", dataset != "jaffe")


def _load_fer_csv(path: Path) -> FaceDataset:
    images, labels, usage = [], [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            pixels = np.array(row["pixels"].split(), dtype=np.uint8)
            images.append(pixels.reshape(48, 48))
            labels.append(int(row["emotion"]))
            usage.append(row["Usage"])
    return _dataset("fer2013", images, labels, np.full(len(labels), ""), usage, f"Kaggle CSV {path}", True)


def _read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise UserError(f"cannot decode image {path}: the file is corrupt or not an image")
    return image


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and (p.name.lower() in _SYNONYMS or p.name.lower() == "contempt"))


def _load_fer_folders(root: Path, contempt: str) -> FaceDataset:
    images, labels, usage = [], [], []
    for part in ("train", "test"):
        if not (root / part).is_dir():
            continue
        for folder in _class_folders(root / part):
            for file in sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.png")):
                prefix = file.name.split("_", 1)[0]
                images.append(_read_gray(file))
                labels.append(label_of(folder.name))
                usage.append(prefix if prefix in _USAGES else ("Training" if part == "train" else "PublicTest"))
    return _dataset("fer2013", images, labels, np.full(len(labels), ""), usage, f"Kaggle folder layout {root}", True)


_CK_NAME = re.compile(r"(S\d+)_(\d+)_(\d+)")


def _load_ck_folders(root: Path, contempt: str) -> FaceDataset:
    if (root / "CK+48").is_dir():
        root = root / "CK+48"
    images, labels, subjects = [], [], []
    for folder in _class_folders(root):
        label = label_of(folder.name, contempt)
        for file in sorted(folder.glob("*.png")):
            match = _CK_NAME.match(file.stem)
            if label is None or not match:
                continue
            images.append(_read_gray(file))
            labels.append(label)
            subjects.append(match.group(1))
    return _dataset("ckplus", images, labels, subjects, np.full(len(labels), ""), f"CK+48 folder layout {root}", True)


_JAFFE_NAME = re.compile(r"([A-Z]{2})\.([A-Z]{2})\d*\.\d+")


def _load_jaffe_folder(root: Path, contempt: str) -> FaceDataset:
    images, labels, subjects = [], [], []
    for file in sorted(root.rglob("*")):
        match = _JAFFE_NAME.match(file.name)
        if not match or file.suffix.lower() not in (".tiff", ".tif"):
            continue
        images.append(_read_gray(file))
        labels.append(label_of(match.group(2)))
        subjects.append(match.group(1))
    return _dataset("jaffe", images, labels, subjects, np.full(len(labels), ""), f"JAFFE .tiff files in {root}", False)


def prepare_images(dataset: FaceDataset, spec: PreprocessSpec, detector: FaceDetector | None) -> tuple[np.ndarray, np.ndarray]:
    """Run the shared preprocessing on every image: (uint8 faces N x S x S, found-a-face mask).

    Full frames (JAFFE) are cropped around the most confident detected face; an image with no
    detected face is kept whole and flagged False. For pre-cropped datasets the detector, when
    given, only flags images with no detectable face (the report's pruning); the image is padded
    by half its size first because BlazeFace misses faces that fill the whole frame.
    """
    faces = np.empty((len(dataset), spec.input_size, spec.input_size), np.uint8)
    found = np.ones(len(dataset), bool)
    progress = detector is not None and len(dataset) > 2000
    for i, image in enumerate(tqdm(dataset.images, desc=f"detecting faces in {dataset.name}", disable=not progress, unit="img")):
        if detector is not None:
            pad = image.shape[0] // 2 if dataset.cropped else 0
            hits = detector.detect(cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else image)
            found[i] = bool(hits)
        box = hits[0].box if detector is not None and hits and not dataset.cropped else None
        faces[i] = face_input(image, spec, box)
    return faces, found


def copies_in_training(dataset: FaceDataset, index: np.ndarray) -> np.ndarray | None:
    """Mask over ``index``: which images have an exact pixel copy in the Training split (FER2013: 280 of
    PublicTest's 3589; the literature keeps them). None where there is no Training split to compare
    with, or ``index`` includes Training images."""
    training = np.flatnonzero(dataset.usage == "Training")
    if not len(training) or np.isin(index, training).any():
        return None
    seen = {_digest(dataset.images[i]) for i in training}
    return np.array([_digest(dataset.images[i]) in seen for i in index], dtype=bool)


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(image.tobytes() + str(image.shape).encode(), digest_size=16).digest()


def training_copies_of(faces: np.ndarray, train: np.ndarray, evaluation: np.ndarray) -> np.ndarray:
    """Indices in ``train`` whose pixels exactly equal an image in ``evaluation`` (FER2013 has 280 in PublicTest)."""
    seen = {faces[i].tobytes() for i in evaluation}
    return np.array([i for i in train if faces[i].tobytes() in seen], dtype=np.int64)
