"""Write gpu-student-w4.npz and gpu-student-d10-w4.npz: width-4 GPU students of depth 18 and 10 (random weights and
batch-norm statistics) in the weights file format of :mod:`trainer.gpu.student`, with generated faces and the logits
PyTorch computes for them.

The test suite holds the Keras model that ``trainer import-weights`` builds from this file to these logits, so the
PyTorch port and the weight layout are checked where PyTorch is not installed (CI). Regenerate (needs torch):

    python tests/data/make_gpu_student_fixture.py
"""

from pathlib import Path

import numpy as np
import torch

from trainer.gpu.faces import CROP, Faces, views
from trainer.gpu.handoff import StudentWeights, write_student
from trainer.gpu.student import StudentNet

MODEL = {"depth": 18, "width": 4, "stem": "3x3-pool", "cbam": True, "reduction": 16, "mlp_min_hidden": 8,
         "dropout": 0.2, "bn_momentum": 0.99, "input_size": 48, "crop": CROP, "num_classes": 7}
PREPROCESS = {"input_size": 48, "crop_margin": 0.07, "gamma_target": 0.5, "scale": 1 / 255, "offset": 0.0}


FILES = {18: "gpu-student-w4.npz", 10: "gpu-student-d10-w4.npz"}


def main() -> None:
    for depth, name in FILES.items():
        write(Path(__file__).with_name(name), {**MODEL, "depth": depth})


def write(path: Path, config: dict) -> None:
    torch.manual_seed(0)
    model = StudentNet(config)
    with torch.no_grad():  # statistics far from the initial 0/1, so a swapped mean and variance would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    model.eval()
    faces = (np.random.default_rng(0).random((6, 48, 48)) * 255).astype(np.uint8)
    on_device = Faces(faces, PREPROCESS, torch.device("cpu"))
    with torch.no_grad():
        logits = model(on_device.model_input(views(on_device.batch(torch.arange(6)), "none")[0])).numpy()
    details = {"dataset": "ckplus", "protocol": "random", "fold": "random", "history": [], "device": "CPU"}
    write_student(path, StudentWeights(model.keras_weights(), config, PREPROCESS, details))
    with np.load(path) as data:
        np.savez_compressed(path, **dict(data), test_faces=faces, test_logits=logits)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
