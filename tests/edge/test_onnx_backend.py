"""The onnxruntime back-end (model.backend: onnxruntime) against LiteRT, on the committed tiny-ck-onnx bundle.

The bundle's model.onnx was converted from its model.tflite as ``trainer export --onnx`` converts
(``tests/data/make_test_bundles.py``), so these tests need onnxruntime but no TensorFlow; they skip,
saying why, where onnxruntime is not installed (the ``dev`` extra installs it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest
from fixtures.bundles import signed_copy
from synthetic import synthetic_face

from edge.device.config import load_config
from edge.device.updates.store import BundleStore
from edge.errors import UserError
from edge.model.bundle import MANIFEST_FILE, ONNX_FILE, load_bundle
from edge.model.classifier import EmotionClassifier
from edge.model.onnx_backend import MAX_BATCH, PROVIDERS, choose_providers, provider_options
from edge.model.selfcheck import MAX_ONNX_DIFFERENCE, self_check
from edge.model.trust import load_trusted_keys, verify_bundle_files
from edge.protocol.flash import pack, unpack

ORT_NAMES = list(PROVIDERS.values())


@pytest.fixture(scope="module")
def ort():
    return pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")


@pytest.fixture(scope="module")
def onnx_bundle(tiny_bundle):
    return load_bundle(tiny_bundle.with_name("tiny-ck-onnx"))


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Twenty generated faces of each of the seven classes (the tiny model learnt these gratings)."""
    rng = np.random.default_rng(7)
    return np.stack([synthetic_face(i % 7, rng) for i in range(140)])


def test_onnxruntime_agrees_with_litert_on_the_same_faces(ort, onnx_bundle, faces):
    litert = EmotionClassifier(onnx_bundle).predict(faces)
    onnx = EmotionClassifier(onnx_bundle, backend="onnxruntime", providers=["cpu"]).predict(faces)
    assert onnx.shape == litert.shape == (140, 7) and onnx.dtype == np.float32
    assert np.allclose(onnx.sum(1), 1, atol=0.03)
    assert (onnx.argmax(1) == litert.argmax(1)).mean() >= 0.95
    assert np.abs(onnx - litert).max() < 0.15  # two INT8 roundings of the same network, not two networks


def test_interface_is_the_classifiers_whatever_the_batch(ort, onnx_bundle, faces):
    classifier = EmotionClassifier(onnx_bundle, backend="onnxruntime", tta_flip=True)
    many = classifier.predict(faces[: MAX_BATCH + 5])  # tta_flip doubles it to 2 * 21 > MAX_BATCH: split in runs
    one_by_one = np.concatenate([classifier.predict(f[None]) for f in faces[: MAX_BATCH + 5]])
    assert many.shape == (MAX_BATCH + 5, 7)
    assert np.abs(many - one_by_one).max() < 0.02  # a batch may round an activation one INT8 step differently
    assert classifier.predict(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)
    assert classifier.providers == ["CPUExecutionProvider"] == ort.get_available_providers()[-1:]


def test_automatic_provider_order_is_tensorrt_cuda_cpu_of_what_is_offered(ort):
    offered = ["AzureExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert choose_providers([], offered) == ORT_NAMES
    assert choose_providers([], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ORT_NAMES[1:]
    assert choose_providers(["cuda", "cpu"], offered) == ORT_NAMES[1:]
    assert choose_providers([], ort.get_available_providers())[-1] == "CPUExecutionProvider"


def test_tensorrt_gets_int8_a_batch_profile_and_an_engine_cache_a_service_can_write(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path / "cache"))  # what systemd's CacheDirectory= sets
    name, options = provider_options("TensorrtExecutionProvider", [1, 48, 48, 1])
    assert name == "TensorrtExecutionProvider" and options["trt_int8_enable"] and options["trt_engine_cache_enable"]
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache" / "tensorrt") and (tmp_path / "cache").is_dir()
    assert (options["trt_profile_min_shapes"], options["trt_profile_max_shapes"]) == \
        ("face:1x48x48x1", f"face:{MAX_BATCH}x48x48x1")
    assert provider_options("CPUExecutionProvider", [1, 48, 48, 1]) == ("CPUExecutionProvider", {})
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path / "file"))
    with pytest.raises(UserError, match="cannot create the TensorRT engine cache .*CacheDirectory= in its unit"):
        provider_options("TensorrtExecutionProvider", [1, 48, 48, 1])


def test_a_provider_this_onnxruntime_lacks_is_one_line_at_start(ort, onnx_bundle):
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has TensorRT")
    with pytest.raises(UserError, match=r"provider tensorrt is not in this onnxruntime build \(it offers: .*cpu\)") as err:
        EmotionClassifier(onnx_bundle, backend="onnxruntime", providers=["tensorrt", "cpu"])
    assert "\n" not in str(err.value)


def test_bad_backend_input_is_one_line(tiny_bundle, monkeypatch):
    plain = load_bundle(tiny_bundle)
    with pytest.raises(UserError, match="needs a bundle with model.onnx, and .*tiny-ck has none"):
        EmotionClassifier(plain, backend="onnxruntime")
    with pytest.raises(UserError, match="unknown model backend 'tensorrt'; known: litert, onnxruntime"):
        EmotionClassifier(plain, backend="tensorrt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets where it is not installed
    with pytest.raises(UserError, match=r"needs onnxruntime: pip install -e '.\[onnx\]'"):
        EmotionClassifier(load_bundle(tiny_bundle.with_name("tiny-ck-onnx")), backend="onnxruntime")


@pytest.mark.parametrize("model, message", [
    ({"backend": "onnx"}, "model.backend must be one of litert, onnxruntime, got 'onnx'"),
    ({"backend": "onnxruntime", "providers": ["gpu"]}, "unknown provider 'gpu'; known: tensorrt, cuda, cpu"),
    ({"backend": "onnxruntime", "providers": ["cpu", "cpu"]}, "lists a provider twice"),
    ({"backend": "onnxruntime", "providers": "cuda"}, "model.providers must be a list of str values"),
    ({"providers": ["cpu"]}, "model.providers applies to model.backend: onnxruntime only"),
])
def test_config_refuses_bad_backend_keys(model, message):
    with pytest.raises(UserError, match=message):
        load_config(overrides={"model": model})


def test_config_takes_the_backend_and_providers():
    model = load_config(overrides={"model": {"backend": "onnxruntime", "providers": ["tensorrt", "cpu"]}}).model
    assert (model.backend, model.providers) == ("onnxruntime", ["tensorrt", "cpu"])
    assert (load_config().model.backend, load_config().model.providers) == ("litert", [])


def _copy(tmp_path, tiny_bundle, name="b"):
    return shutil.copytree(tiny_bundle.with_name("tiny-ck-onnx"), tmp_path / name)


def test_bundle_refuses_an_onnx_file_that_does_not_match_its_manifest(tmp_path, tiny_bundle):
    tampered = _copy(tmp_path, tiny_bundle, "tampered")
    (tampered / ONNX_FILE).write_bytes((tampered / ONNX_FILE).read_bytes()[:-1] + b"\0")
    with pytest.raises(UserError, match="model.onnx does not match the checksum in its manifest"):
        load_bundle(tampered)
    missing = _copy(tmp_path, tiny_bundle, "missing")
    (missing / ONNX_FILE).unlink()
    with pytest.raises(UserError, match="manifest lists model.onnx but the file is missing"):
        load_bundle(missing)
    unlisted = shutil.copytree(tiny_bundle, tmp_path / "unlisted")
    shutil.copy(tiny_bundle.with_name("tiny-ck-onnx") / ONNX_FILE, unlisted / ONNX_FILE)
    with pytest.raises(UserError, match="model.onnx is not in its manifest"):
        load_bundle(unlisted)


def test_signature_covers_the_onnx_file_through_the_manifest(tmp_path, tiny_bundle, keys):
    trusted = load_trusted_keys([keys[1]])
    signed = signed_copy(tiny_bundle.with_name("tiny-ck-onnx"), tmp_path / "signed", keys[0])
    assert verify_bundle_files(signed, trusted) and load_bundle(signed).onnx_bytes
    manifest = json.loads((signed / MANIFEST_FILE).read_text())
    manifest["onnx"]["sha256"] = "0" * 64  # an attacker re-pointing the checksum at another model.onnx
    (signed / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="signature does not match"):
        verify_bundle_files(signed, trusted)


def test_an_onnx_bundle_travels_by_flash_and_installs(tmp_path, tiny_bundle, keys):
    signed = signed_copy(tiny_bundle.with_name("tiny-ck-onnx"), tmp_path / "signed", keys[0])
    files = unpack(pack(signed))
    assert set(files) == {"manifest.json", "model.tflite", "model.onnx", "signature.json"}
    store = BundleStore(tmp_path / "models", load_trusted_keys([keys[1]]))
    result = store.install(files, "tiny-onnx", "t1")
    assert result.installed, result
    assert (store.current() / ONNX_FILE).read_bytes() == (signed / ONNX_FILE).read_bytes()


def test_the_runtime_runs_the_configured_backend_and_keeps_it_after_an_update(ort, tmp_path, tiny_bundle, keys):
    from edge.device.runtime import Runtime

    (tmp_path / "frames").mkdir()
    cfg = load_config(overrides={"model": {"bundle": str(tiny_bundle.with_name("tiny-ck-onnx")), "trusted_keys": [str(keys[1])],
                                           "backend": "onnxruntime", "providers": ["cpu"], "dir": str(tmp_path / "m")},
                                 "source": {"uri": str(tmp_path / "frames")}, "spool": {"path": str(tmp_path / "s.db")}})
    runtime = Runtime(cfg)
    assert runtime.analyzer.classifier.providers == ["CPUExecutionProvider"]
    assert runtime.updater.store.classifier == runtime.classifier_for  # updates are self-checked on this back-end
    runtime.install(load_bundle(tiny_bundle.with_name("tiny-ck-onnx")))
    assert (runtime.analyzer.classifier.backend, runtime.analyzer.classifier.providers) == \
        ("onnxruntime", ["CPUExecutionProvider"])


def test_an_onnxruntime_device_refuses_an_update_it_could_not_run_before_switching(ort, tmp_path, tiny_bundle, keys):
    store = BundleStore(tmp_path / "models", load_trusted_keys([keys[1]]),
                        classifier=lambda bundle: EmotionClassifier(bundle, backend="onnxruntime", providers=["cpu"]))
    without_onnx = unpack(pack(signed_copy(tiny_bundle, tmp_path / "plain", keys[0])))
    result = store.install(without_onnx, "tiny", "t1")
    assert result.status == "refused" and "needs a bundle with model.onnx" in result.reason
    assert store.current() is None
    with_onnx = unpack(pack(signed_copy(tiny_bundle.with_name("tiny-ck-onnx"), tmp_path / "onnx", keys[0])))
    assert store.install(with_onnx, "tiny-onnx", "t2").installed


def test_edge_check_runs_the_configured_back_end_against_the_reference_kernels(ort, onnx_bundle, keys, tmp_path, capsys):
    from edge.cli import main as edge_main

    bundle = signed_copy(onnx_bundle.path, tmp_path / "b", keys[0])
    config = tmp_path / "device.yaml"
    config.write_text(f"model: {{backend: onnxruntime, trusted_keys: [{keys[1]}]}}\n")
    assert edge_main(["check", "--bundle", str(bundle), "--config", str(config)]) == 0
    assert "onnxruntime within" in capsys.readouterr().out


def negated_onnx_classifier(folder) -> None:
    """``model.onnx`` with its classifier's INT8 weights negated (it runs, its answers change), the manifest's checksum
    updated: an onnxruntime that computes wrong results looks the same from outside."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(folder / ONNX_FILE))
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and 7 in t.dims
               and len(t.dims) == 2]
    negated = np.clip(-numpy_helper.to_array(weights[-1]).astype(np.int16), -127, 127).astype(np.int8)
    weights[-1].CopyFrom(numpy_helper.from_array(negated, weights[-1].name))
    data = model.SerializeToString()
    (folder / ONNX_FILE).write_bytes(data)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["onnx"] = {**manifest["onnx"], "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def test_onnxruntime_answers_that_are_not_the_models_fail_the_self_check(ort, onnx_bundle, tmp_path):
    onnx_device = lambda b: EmotionClassifier(b, backend="onnxruntime", providers=["cpu"])  # noqa: E731
    checked = self_check(onnx_bundle, onnx_device)
    assert checked.onnx is not None and checked.onnx <= MAX_ONNX_DIFFERENCE and "onnxruntime within" in checked.describe()
    assert self_check(onnx_bundle).onnx is None  # a LiteRT device does not run model.onnx
    folder = tmp_path / "wrong"
    shutil.copytree(onnx_bundle.path, folder)
    negated_onnx_classifier(folder)
    self_check(load_bundle(folder))  # model.tflite is untouched: LiteRT's answers still pass
    with pytest.raises(UserError, match=r"self-check failed: onnxruntime's answers \(CPUExecutionProvider\) differ "
                                        r"from LiteRT's reference kernels by 0\.\d+ \(bound 0\.1250\) on input .*another "
                                        r"top class"):
        self_check(load_bundle(folder), onnx_device)
