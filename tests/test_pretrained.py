"""Nets shipped inside fcnseg (fcnseg.pretrained), reached by name wherever a checkpoint is taken; packing them;
torch.hub's entry points; the package data a wheel carries. A tiny net packed in a temporary folder stands in
for the real file."""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import fcnseg
from fcnseg import pretrained
from fcnseg.api import Segmenter
from fcnseg.checkpoint import checked_checkpoint, model_from_checkpoint, read_checkpoint, save_model
from fcnseg.cli import main
from fcnseg.data.info import CAMVID, SYNTHETIC_ROADS, DatasetInfo
from fcnseg.errors import ConfigError, DataError, WeightsError, WriteError
from fcnseg.train import TrainConfig, train

from .helpers import digests, error_names, load_script, one_line_error, random_fcn, randomize_scores, refused, write_png

REPO = Path(__file__).resolve().parents[1]
NAME = "camvid-fcn8s"


def _random_norms(model):
    """BatchNorm statistics away from 0 and 1, so that their cast to float16 is seen."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return model


@pytest.fixture(scope="module")
def original():
    """The net the shipped file is packed from: VGG16-BN (float buffers and integer step counters)."""
    return _random_norms(randomize_scores(random_fcn(backbone="vgg16_bn", width=1 / 16, num_classes=8)))


@pytest.fixture(scope="module")
def packed(tmp_path_factory, original):
    """(the folder of the shipped file, its SHA-256, the training checkpoint it was packed from)."""
    folder = tmp_path_factory.mktemp("pretrained")
    optimizer = torch.optim.SGD(original.parameters(), lr=0.1, momentum=0.9)
    training = {k: v.clone() for k, v in original.state_dict().items()}  # as an EMA run keeps them, apart
    last = save_model(original, SYNTHETIC_ROADS, folder / "run" / "last.pth", optimizer=optimizer.state_dict(),
                      iteration=7, rng={"torch": torch.get_rng_state()}, train_state_dict=training)
    sha256 = pretrained.pack(last, folder / "shipped" / f"{NAME}.pth")
    return folder / "shipped", sha256, last


@pytest.fixture
def shipped(monkeypatch, packed):
    """fcnseg.pretrained pointed at the tiny packed net, shipped as camvid-fcn8s; returns its path."""
    folder, sha256, _ = packed
    monkeypatch.setattr(pretrained, "FOLDER", folder)
    monkeypatch.setattr(pretrained, "SHIPPED", {NAME: {"file": f"{NAME}.pth", "sha256": sha256, "card": f"{NAME}.md",
                                                       "description": "a tiny stand-in"}})
    return folder / f"{NAME}.pth"


def _rounded(model):
    """A copy of ``model`` with every floating-point weight and buffer rounded to float16 and back."""
    copy = random_fcn(backbone="vgg16_bn", width=1 / 16, num_classes=8)
    copy.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    return copy.eval()


# Packing


def test_pack_keeps_the_validated_weights_in_float16_and_the_spec_only(packed, original):
    folder, sha256, last = packed
    data = torch.load(folder / f"{NAME}.pth", weights_only=True)
    assert sorted(data) == ["format", "model_state_dict", "spec", "version"]  # no optimizer, RNG, training weights
    assert data["format"] == "fcnseg-checkpoint" and data["version"] == 2
    assert data["spec"] == original.spec.with_classes(SYNTHETIC_ROADS).to_dict()
    state = data["model_state_dict"]
    assert state.keys() == original.state_dict().keys()
    assert {v.dtype for k, v in state.items() if not k.endswith("num_batches_tracked")} == {torch.float16}
    assert {v.dtype for k, v in state.items() if k.endswith("num_batches_tracked")} == {torch.int64}
    assert sha256 == pretrained.file_sha256(folder / f"{NAME}.pth")
    float32_bytes = sum(v.numel() * v.element_size() for v in original.state_dict().values())
    assert (folder / f"{NAME}.pth").stat().st_size < 0.6 * float32_bytes < last.stat().st_size / 3


def test_a_packed_net_computes_in_float32_as_the_net_with_float16_rounded_weights(shipped, original, one_thread):
    def float_types(state):
        return {value.dtype for value in state.values() if value.is_floating_point()}

    # The weights a reader gets are float32, from the file and from its dict as torch.load gives it.
    assert float_types(read_checkpoint(shipped)["model_state_dict"]) == {torch.float32}
    assert float_types(checked_checkpoint(torch.load(shipped, weights_only=True))[1]) == {torch.float32}
    net, _ = model_from_checkpoint(pretrained.resolve(NAME))
    assert float_types(net.state_dict()) == {torch.float32}
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, exact, rounded = net(x), original(x), _rounded(original)(x)
    assert torch.equal(logits, rounded)
    assert (logits - exact).abs().max() < 1e-2 * exact.abs().max()  # float16's 3 digits, not another net
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    segmenter = fcnseg.load(NAME, device="cpu")
    reference = Segmenter(_rounded(original), segmenter.spec, device="cpu")
    np.testing.assert_array_equal(segmenter.predict(image), reference.predict(image))


def test_a_look_at_the_spec_maps_the_file_and_reads_legacy_files_whole(shipped, tmp_path):
    """The starting net's architecture is read with the tensors mapped (run.prepare reads them later); a file of
    torch's legacy format, which torch cannot map, is read whole and gives the same spec."""
    mapped = read_checkpoint(shipped, mmap=True)
    assert {v.dtype for k, v in mapped["model_state_dict"].items() if "num_batches" not in k} == {torch.float16}
    assert mapped["spec"] == read_checkpoint(shipped)["spec"]
    legacy = tmp_path / "legacy.pth"
    torch.save(torch.load(shipped, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert read_checkpoint(legacy, mmap=True)["spec"] == mapped["spec"]


def test_pack_refuses_to_overwrite_a_file_without_overwrite(tmp_path, packed):
    _, _, last = packed
    out = tmp_path / "out.pth"
    out.write_bytes(b"the user's file")
    with pytest.raises(WriteError) as caught:
        pretrained.pack(last, out)
    error_names(caught, str(out), "--overwrite")
    assert out.read_bytes() == b"the user's file"
    sha256 = pretrained.pack(last, out, overwrite=True)
    assert sha256 == pretrained.file_sha256(out) and fcnseg.load(out, device="cpu").info == SYNTHETIC_ROADS
    before = digests(last.parent)
    with pytest.raises(WriteError) as caught:  # the checkpoint being packed, never
        pretrained.pack(last, last, overwrite=True)
    error_names(caught, str(last))
    assert digests(last.parent) == before
    with pytest.raises(WriteError) as caught:  # a folder: never replaced by a file
        pretrained.pack(last, tmp_path, overwrite=True)
    error_names(caught, str(tmp_path), "folder")


def test_pack_keeps_a_file_made_at_out_while_it_packs(tmp_path, packed, monkeypatch):
    """The check that ``out`` is free ran only at the start: a file made there meanwhile was replaced."""
    from fcnseg import checkpoint

    _, _, last = packed
    out = tmp_path / "out.pth"
    write = checkpoint.write_checkpoint

    def user_writes_first(data, path):
        out.write_bytes(b"the user's file")
        return write(data, path)

    monkeypatch.setattr(checkpoint, "write_checkpoint", user_writes_first)
    with pytest.raises(WriteError) as caught:
        pretrained.pack(last, out)
    error_names(caught, str(out), "another process", "--overwrite")
    assert out.read_bytes() == b"the user's file"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.pth"]  # no temporary file left
    assert pretrained.pack(last, out, overwrite=True) == pretrained.file_sha256(out)  # asked: replaced


def test_the_pack_script_prints_the_sha256_and_refuses_an_existing_output(tmp_path, packed, capsys, monkeypatch):
    _, _, last = packed
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import pack_pretrained

    out = tmp_path / "net.pth"
    assert pack_pretrained.main([str(last), str(out)]) == 0
    assert f"sha256 {pretrained.file_sha256(out)}" in capsys.readouterr().out
    assert pack_pretrained.main([str(last), str(out)]) == 2
    one_line_error(capsys.readouterr().err, str(out), "--overwrite")
    assert pack_pretrained.main([str(last), str(out), "--overwrite", "--dtype", "float32"]) == 0
    assert torch.load(out, weights_only=True)["model_state_dict"]["score_fr.weight"].dtype == torch.float32


def test_weights_beyond_float16_are_refused_when_packing(tmp_path, original):
    big = random_fcn(backbone="vgg16_bn", width=1 / 16, num_classes=8)
    with torch.no_grad():
        big.score_fr.bias.fill_(1e6)
    checkpoint = save_model(big, SYNTHETIC_ROADS, tmp_path / "big.pth")
    with pytest.raises(WeightsError) as caught:
        pretrained.pack(checkpoint, tmp_path / "out.pth")
    error_names(caught, "score_fr.bias", "torch.float16", "bfloat16")
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("dtype", ["float16", torch.int8])
def test_pack_takes_a_floating_point_torch_dtype_only(tmp_path, packed, dtype):
    # dtype="float16" (a string) was an AttributeError traceback.
    with pytest.raises(ConfigError, match="floating-point torch.dtype"):
        pretrained.pack(packed, tmp_path / "out.pth", dtype=dtype)


def test_a_name_too_long_to_look_up_is_one_line_for_load_and_predict(tmp_path):
    # Path.exists() / is_file() raised OSError "File name too long" from fcnseg.load and Segmenter.predict.
    with pytest.raises(WeightsError, match="cannot be looked up"):
        fcnseg.load("a" * 5000 + ".pth")
    segmenter = fcnseg.load("camvid-fcn8s")
    with pytest.raises(DataError, match="its name is too long for the file system"):
        segmenter.predict("a" * 5000 + ".png")


# Names


def test_names_and_the_entries_in_this_version():
    assert pretrained.names() == sorted(pretrained.SHIPPED)
    for name, entry in pretrained.SHIPPED.items():  # every entry's file and card are in the package
        assert pretrained.path_of(name).is_file() and pretrained.card_of(name).is_file() and entry["description"]
    if not pretrained.SHIPPED:  # none yet: a name is refused saying so, never as a damaged install
        with pytest.raises(WeightsError, match="none yet"):
            pretrained.resolve(NAME)


def test_load_by_name_gives_the_shipped_net(shipped, original):
    segmenter = fcnseg.load(NAME, device="cpu")
    assert segmenter.info == SYNTHETIC_ROADS and segmenter.spec == original.spec.with_classes(SYNTHETIC_ROADS)
    assert pretrained.resolve(NAME) == shipped and pretrained.path_of(NAME) == shipped


def test_an_unknown_name_lists_the_shipped_names(shipped, capsys, tmp_path):
    with pytest.raises(WeightsError) as caught:
        fcnseg.load("camvid-fcn9s")
    error_names(caught, "camvid-fcn9s", NAME)
    refused(capsys, ["predict", "camvid-fcn9s", write_png(tmp_path / "a.png"), "--out", tmp_path / "out"],
            "camvid-fcn9s", NAME)
    assert not (tmp_path / "out").exists()
    with pytest.raises(WeightsError) as caught:
        pretrained.path_of("nope")
    error_names(caught, "nope", NAME)


def test_a_missing_path_keeps_its_not_found_message(shipped, tmp_path):
    for missing in (tmp_path / "best.pth", "runs/camvid-fcn8s"):  # a suffix or a folder: a path, not a name
        with pytest.raises(WeightsError) as caught:
            fcnseg.load(missing)
        message = error_names(caught, "not found", str(missing))
        assert "shipped" not in message


def test_a_users_file_named_like_the_net_wins(shipped, tmp_path, monkeypatch):
    mine = DatasetInfo("mine", ("a", "b", "c"), ((0, 0, 0), (255, 0, 0), (0, 255, 0)))
    save_model(random_fcn(num_classes=3), mine, tmp_path / NAME)
    monkeypatch.chdir(tmp_path)
    assert fcnseg.load(NAME, device="cpu").info == mine
    assert pretrained.resolve(NAME) == Path(NAME)


def test_a_damaged_shipped_file_is_refused_in_one_line_with_both_hashes(shipped, packed, tmp_path, monkeypatch,
                                                                         capsys):
    _, sha256, _ = packed
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = bytearray(shipped.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, inside a tensor: the file still loads, its hash does not match
    (damaged / f"{NAME}.pth").write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "FOLDER", damaged)
    found = pretrained.file_sha256(damaged / f"{NAME}.pth")
    line = refused(capsys, ["predict", NAME, write_png(tmp_path / "a.png"), "--out", tmp_path / "out"],
                   str(damaged / f"{NAME}.pth"), sha256, found, "git checkout")
    assert "reinstall" in line
    with pytest.raises(WeightsError):
        fcnseg.load(NAME)
    (damaged / f"{NAME}.pth").write_bytes(shipped.read_bytes())
    fcnseg.load(NAME)  # intact: found so once, then trusted while its size, time and inode stay
    (damaged / f"{NAME}.pth").write_bytes(bytes(data))  # damaged in place after that
    with pytest.raises(WeightsError):
        fcnseg.load(NAME)
    shutil.rmtree(damaged)
    with pytest.raises(WeightsError) as caught:  # missing
        fcnseg.load(NAME)
    error_names(caught, str(damaged / f"{NAME}.pth"), sha256, "reinstall")


# The commands


def test_predict_by_name_end_to_end_and_again_as_the_same_job(shipped, tmp_path, capsys, one_thread):
    image = write_png(tmp_path / "in" / "street.png", size=(32, 48))
    argv = ["predict", NAME, str(image), "--out", str(tmp_path / "out"), "--threads", "1"]
    assert main(argv) == 0
    expected = fcnseg.load(NAME, device="cpu").predict(image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "street_mask.png")), expected)
    capsys.readouterr()
    assert main(argv) == 0  # the name resolves to the same file: the outputs are kept, not made again
    assert "written by an earlier run" in capsys.readouterr().err


def test_export_by_name_end_to_end(shipped, tmp_path, capsys, one_thread):
    out = tmp_path / "net.pt"
    assert main(["export", NAME, "--format", "torchscript", "--out", str(out), "--check-sizes", "32x32",
                 "--threads", "1"]) == 0
    assert "synthetic_roads" in capsys.readouterr().out
    assert fcnseg.load(out, device="cpu").info == SYNTHETIC_ROADS
    before = shipped.read_bytes()
    refused(capsys, ["export", NAME, "--format", "torchscript", "--out", shipped, "--overwrite"], str(shipped))
    assert shipped.read_bytes() == before  # the shipped file is an input: never replaced


def test_eval_and_serve_take_the_name(shipped, tmp_path, capsys, monkeypatch):
    loaded = []

    def fake_load(path, **kwargs):
        loaded.append(path)
        raise WeightsError("stop here")

    monkeypatch.setattr("fcnseg.commands.evaluate.load", fake_load)
    refused(capsys, ["eval", NAME, "--dataset", "synthetic", "--out", tmp_path / "eval"], "stop here")
    assert loaded == [shipped]  # resolved before anything is claimed in --out

    class Server:
        url = "http://127.0.0.1:1/"

        def serve_forever(self):
            pass

        def server_close(self):
            pass

    served = []
    monkeypatch.setattr("fcnseg.commands.serve.make_server", lambda segmenter, *a, **k: served.append(segmenter)
                        or Server())
    assert main(["serve", NAME, "--port", "0", "--threads", "1"]) == 0
    assert served[0].info == SYNTHETIC_ROADS
    refused(capsys, ["serve", "camvid-fcn9s"], "camvid-fcn9s", NAME)


def test_init_from_a_shipped_net_into_other_classes(shipped, tmp_path, original, monkeypatch):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{index}.png")
        Image.fromarray(rng.integers(0, 2, (32, 32), dtype=np.uint8)).save(root / "masks" / f"{index}.png")
    (root / "classes.txt").write_text("background\nroad\n")  # road is the shipped net's class 2
    hashed = []
    monkeypatch.setattr(pretrained, "file_sha256", lambda path: hashed.append(path) or pretrained.file_digest(path,
                                                                                                            "sha256"))
    out = tmp_path / "run"
    config = TrainConfig.from_dict({
        "dataset": "folder",  # the architecture is the starting net's
        "root": str(root), "train_split": "all", "val_split": "all", "batch_size": 2, "workers": 0, "lr": 1e-12,
        "iterations": 1, "val_interval": 1, "checkpoint_interval": 1, "threads": 1, "init_from": NAME,
        "out": str(out)})
    train(config)
    assert len(hashed) <= 1  # read for the architecture, then the weights: checked once (or once before)
    assert yaml.safe_load((out / "config.yaml").read_text())["init_from"] == NAME  # as written: resumes find it
    state = torch.load(out / "last.pth", weights_only=True)["model_state_dict"]
    start = _rounded(original).state_dict()
    torch.testing.assert_close(state["score_fr.weight"][1], start["score_fr.weight"][2])  # road's row carried
    assert state["score_fr.weight"][0].abs().max() < 1e-6  # background is new: it starts at zero
    torch.testing.assert_close(state["backbone.features.0.weight"], start["backbone.features.0.weight"])


# torch.hub and the package's data


def test_hub_builders_and_the_shipped_net(shipped, original):
    net = torch.hub.load(str(REPO), "fcn8s", source="local", backbone="vgg16_bn", width=0.0625, num_classes=3)
    assert net.spec.name == "fcn8s" and net.spec.num_classes == 3 and net.spec.backbone == "vgg16_bn"
    assert torch.hub.load(str(REPO), "fcn32s", source="local", width=0.0625).spec.name == "fcn32s"
    hubconf = load_script(REPO / "hubconf.py")
    # torch.hub.list's rule: every public callable is an entry point (imports are kept private)
    entries = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")]
    assert entries == ["camvid_fcn8s", "fcn16s", "fcn32s", "fcn8s"]
    trained = torch.hub.load(str(REPO), "camvid_fcn8s", source="local")
    assert not trained.training and trained.spec == original.spec.with_classes(SYNTHETIC_ROADS)
    torch.testing.assert_close(trained.state_dict(), _rounded(original).state_dict())
    fresh = torch.hub.load(str(REPO), "camvid_fcn8s", source="local", pretrained=False)
    assert fresh.spec.classes == CAMVID and fresh.spec.width == 0.125 and fresh.spec.geometry == "fast"
    with pytest.raises(TypeError, match="pretrained must be True or False, got 'no'"):  # "no" gave the trained net
        torch.hub.load(str(REPO), "camvid_fcn8s", source="local", pretrained="no")


def test_hubconf_finds_the_source_when_fcnseg_is_not_installed(tmp_path):
    # No PYTHONPATH, and the editable install's path entry removed: fcnseg is not importable until hubconf runs
    # (torch.hub runs it the same way, by its path, with only the repository's root on sys.path).
    code = ("import sys; sys.path = [p for p in sys.path if not p.endswith('src')]; import importlib.util, runpy; "
            "assert importlib.util.find_spec('fcnseg') is None; "
            f"hub = runpy.run_path({str(REPO / 'hubconf.py')!r}); "
            "import fcnseg; print(fcnseg.__file__, hub['dependencies'])")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(REPO / "src" / "fcnseg" / "__init__.py"), "['torch']"]


def test_the_package_carries_py_typed_and_the_shipped_files():
    assert (importlib.resources.files("fcnseg") / "py.typed").is_file()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["fcnseg"]
    assert {"py.typed", "pretrained/*.pth", "pretrained/*.md", "web/*.html"} <= set(data)
    for entry in pretrained.SHIPPED.values():  # the files a shipped entry names fall under those patterns
        assert Path(entry["file"]).suffix == ".pth" and Path(entry["card"]).suffix == ".md"
