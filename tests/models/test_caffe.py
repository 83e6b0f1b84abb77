"""The authors' .caffemodel files read without Caffe: a small protobuf writer here makes files of every
layout (LayerParameter and legacy V1 `layers`, packed and unpacked values, shape or num/channels/height/
width, float and double), and the converted nets must compute the oracle's function (tests/models/
torchfcn_oracle.py restates the authors' VGG16 prototxts, which pytorch-fcn's graphs follow)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcnseg.checkpoint import model_from_checkpoint, save_model
from fcnseg.cli import main
from fcnseg.errors import WeightsError
from fcnseg.models.caffe import open_caffemodel
from fcnseg.models.zoo import CAFFE_NETS, fcn_from_caffemodel

from .torchfcn_oracle import CONVS, POOL_AFTER, TorchFCN

WIDTH = 1 / 8
V1_ENUM = {"Convolution": 4, "Deconvolution": 39, "ReLU": 18, "Scale": 100}


# --- a protobuf writer, just enough for NetParameter / LayerParameter / V1LayerParameter / BlobProto --------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def delimited(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint(len(payload)) + payload


def blob(array: np.ndarray, packed=True, legacy=False, double=False) -> bytes:
    array = np.asarray(array)
    if legacy:  # num, channels, height, width (fields 1-4), leading ones for fewer dims
        dims = (1,) * (4 - array.ndim) + array.shape
        out = b"".join(key(f, 0) + varint(d) for f, d in zip((1, 2, 3, 4), dims, strict=True))
    else:
        out = delimited(7, delimited(1, b"".join(varint(d) for d in array.shape)))
    field, dtype, wire = (8, "<f8", 1) if double else (5, "<f4", 5)
    values = array.ravel().astype(dtype)
    if packed:
        return out + delimited(field, values.tobytes())
    records = np.empty(values.size, dtype=[("key", "u1"), ("value", dtype)])  # key byte + value, per element
    records["key"], records["value"] = key(field, wire)[0], values
    return out + records.tobytes()


def layer(name: str, kind: str, blobs: list[bytes], v1: bool) -> bytes:
    if v1:
        head = delimited(4, name.encode()) + key(5, 0) + varint(V1_ENUM[kind])
        return head + b"".join(delimited(6, b) for b in blobs)
    return delimited(1, name.encode()) + delimited(2, kind.encode()) + b"".join(delimited(7, b) for b in blobs)


def net_layers(net: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(Caffe layer name, module) of a net's weighted layers: a two-head net's head layers end in _sem / _geo,
    a colour-HHA net's layers in color / hha (its upscore has no suffix)."""
    if isinstance(net, ColorHHA):
        return [(f"{name}{stream}", m) for stream in ("color", "hha")
                for name, m in getattr(net, stream).named_children() if not name.startswith("upscore")] + [
            ("upscore", net.upscore)]
    if not isinstance(net, TwoHeads):
        return list(net.named_children())
    head = lambda name: name.startswith(("score", "upscore"))  # noqa: E731
    return ([(name, m) for name, m in net.sem.named_children() if not head(name)]
            + [(f"{name}_{task}", m) for task in ("sem", "geo") for name, m in getattr(net, task).named_children()
               if head(name)])


def caffemodel(path, net: torch.nn.Module, v1=False, **form) -> None:
    """Write ``net``'s weights as a .caffemodel with the authors' layer names (pytorch-fcn kept them)."""
    layers = [layer("relu1_1", "ReLU", [], v1)]  # layers without blobs are passed over
    for name, module in net_layers(net):
        if isinstance(module, torch.nn.ConvTranspose2d):
            layers.append(layer(name, "Deconvolution", [blob(module.weight.detach().numpy(), **form)], v1))
        elif isinstance(module, torch.nn.Conv2d):
            blobs = [blob(module.weight.detach().numpy(), **form), blob(module.bias.detach().numpy(), **form)]
            layers.append(layer(name, "Convolution", blobs, v1))
    if net.kind == "8s_atonce":  # the at-once net's fixed skip scaling, as Scale layers (one blob: C scales)
        for name, channels, value in (("scale_pool4", net.score_pool4.in_channels, 0.01),
                                      ("scale_pool3", net.score_pool3.in_channels, 0.0001)):
            layers.append(layer(name, "Scale", [blob(np.full(channels, value, np.float32), **form)], v1))
    path.write_bytes(delimited(1, b"FCN") + b"".join(delimited(2 if v1 else 100, entry) for entry in layers))


class CaffeNetFCN32s(torch.nn.Module):
    """voc-fcn-alexnet's prototxt restated: CaffeNet (grouped conv2/4/5, LRN after pool1/pool2), fc6 6x6,
    score_fr, a 63-wide x32 deconvolution and the reference's crop of 18."""

    kind = "32s"

    def __init__(self, n_class: int = 21, width: float = 1.0):
        super().__init__()
        c = [int(v * width) for v in (96, 256, 384, 384, 256, 4096)]
        self.conv1 = torch.nn.Conv2d(3, c[0], 11, stride=4, padding=100)
        self.conv2 = torch.nn.Conv2d(c[0], c[1], 5, padding=2, groups=2)
        self.conv3 = torch.nn.Conv2d(c[1], c[2], 3, padding=1)
        self.conv4 = torch.nn.Conv2d(c[2], c[3], 3, padding=1, groups=2)
        self.conv5 = torch.nn.Conv2d(c[3], c[4], 3, padding=1, groups=2)
        self.fc6 = torch.nn.Conv2d(c[4], c[5], 6)
        self.fc7 = torch.nn.Conv2d(c[5], c[5], 1)
        self.score_fr = torch.nn.Conv2d(c[5], n_class, 1)
        self.upscore = torch.nn.ConvTranspose2d(n_class, n_class, 63, stride=32, bias=False)

    def forward(self, x):
        pool = lambda h: F.max_pool2d(h, 3, stride=2, ceil_mode=True)  # noqa: E731
        lrn = lambda h: F.local_response_norm(h, 5, alpha=1e-4, beta=0.75, k=1.0)  # noqa: E731
        h = lrn(pool(torch.relu(self.conv1(x))))
        h = lrn(pool(torch.relu(self.conv2(h))))
        h = torch.relu(self.conv5(torch.relu(self.conv4(torch.relu(self.conv3(h))))))
        h = torch.relu(self.fc7(torch.relu(self.fc6(pool(h)))))
        return self.upscore(self.score_fr(h))[:, :, 18:18 + x.shape[2], 18:18 + x.shape[3]]


class TwoHeads(torch.nn.Module):
    """The SIFT Flow prototxts restated: one VGG16 trunk scored by a semantic and a geometric head, each
    with the VOC nets' layers and crops; the output is both heads' scores, semantic first."""

    def __init__(self, kind: str, classes: tuple[int, int]):
        super().__init__()
        self.kind = kind
        self.sem, self.geo = (TorchFCN(kind, n_class=c, width=WIDTH) for c in classes)
        for name, module in self.sem.named_children():  # one trunk: the geometric head reads the same layers
            if name.startswith(("conv", "fc")):
                setattr(self.geo, name, module)

    def forward(self, x):
        return torch.cat([self.sem(x), self.geo(x)], 1)


class ColorHHA(torch.nn.Module):
    """nyud-fcn32s-color-hha's prototxt restated: a VGG16 per input (colour: channels 0-2, HHA: 3-5), their
    score_fr outputs summed with weights 0.5 and 0.5, one 64-wide x32 deconvolution, the crop of 19."""

    kind = "32s"

    def __init__(self, classes: int):
        super().__init__()
        self.color, self.hha = TorchFCN("32s", classes, WIDTH), TorchFCN("32s", classes, WIDTH)
        self.upscore = torch.nn.ConvTranspose2d(classes, classes, 64, stride=32, bias=False)

    @staticmethod
    def trunk(net: TorchFCN, h: torch.Tensor) -> torch.Tensor:
        for name, _, _ in CONVS:
            h = torch.relu(getattr(net, name)(h))
            h = F.max_pool2d(h, 2, stride=2, ceil_mode=True) if name in POOL_AFTER else h
        return torch.relu(net.fc7(torch.relu(net.fc6(h))))

    def forward(self, x):
        fused = (0.5 * self.color.score_fr(self.trunk(self.color, x[:, :3]))
                 + 0.5 * self.hha.score_fr(self.trunk(self.hha, x[:, 3:])))
        return self.upscore(fused)[:, :, 19:19 + x.shape[2], 19:19 + x.shape[3]]


def oracle(kind: str, classes: int, seed: int = 1, backbone: str = "vgg16", heads: tuple[int, ...] = (),
           inputs: tuple[str, ...] = ("rgb",)):
    torch.manual_seed(seed)
    if len(inputs) == 2:
        net = ColorHHA(classes).eval()
    elif heads:
        net = TwoHeads(kind, (classes, *heads)).eval()
    else:
        net = (CaffeNetFCN32s(classes, WIDTH) if backbone == "caffenet" else TorchFCN(kind, n_class=classes,
                                                                                     width=WIDTH)).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.split(".")[-2].startswith("upscore"):  # the authors' frozen kernels: on the diagonal only
                p.copy_(torch.eye(p.shape[0])[:, :, None, None] * torch.rand(p.shape[0], 1, *p.shape[2:]))
            else:
                p.copy_(torch.randn_like(p) * (2.0 / p[0].numel()) ** 0.5)
    return net


CONVERTIBLE = list(CAFFE_NETS)
# Every file layout at least once across the nets.
FORMS = [{"v1": False}, {"v1": True}, {"packed": False}, {"legacy": True}, {"double": True},
         {"v1": True, "packed": False, "legacy": True}, {"double": True, "packed": False}, {"legacy": True},
         {"v1": True}, {}, {"packed": False}, {"double": True}, {"legacy": True}, {"v1": True}]


@pytest.mark.parametrize("name, form", list(zip(CONVERTIBLE, FORMS, strict=True)))
def test_converted_nets_compute_the_oracles_function(tmp_path, name, form):
    entry = CAFFE_NETS[name]
    kind = entry["model"].removeprefix("fcn")
    info = entry["info"]
    inputs = entry.get("inputs", ("rgb",))
    net = oracle(kind, info.num_classes, backbone=entry.get("backbone", "vgg16"), heads=info.head_classes[1:],
                 inputs=inputs)
    caffemodel(tmp_path / "net.caffemodel", net, **form)
    model, converted_info = fcn_from_caffemodel(tmp_path / "net.caffemodel", name)
    assert converted_info == info and model.config["geometry"] == "reference"
    assert model.config["name"] == entry["model"] and model.head_classes == info.head_classes
    assert model.config.get("inputs", ("rgb",)) == inputs
    # The authors' VOC mean, or the dataset's own as their data layers subtract it
    means = {"nyud-fcn32s-color": "caffe:116.19,97.203,92.318", "nyud-fcn32s-hha": "hha:132.431,94.076,118.477",
             "nyud-fcn32s-color-hha": "caffe:116.19,97.203,92.318+hha:132.431,94.076,118.477"}
    expected = means.get(name, "caffe:114.578,115.294,108.353" if name.startswith("siftflow") else "caffe")
    assert model.spec.normalization_text == expected and model.spec.classes == info
    reloaded, _ = model_from_checkpoint(save_model(model, None, tmp_path / "net.pth"))  # the spec travels with it
    assert reloaded.spec == model.spec
    for size in [(1, 1), (37, 45), (64, 64)]:
        x = torch.randn(1, 3 * len(inputs), *size, generator=torch.Generator().manual_seed(sum(size))) * 50
        with torch.no_grad():
            expected, actual = net(x), model(x)
        assert expected.abs().max() > 1e-3
        assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max(), size


def test_every_layout_gives_the_same_blobs(tmp_path):
    net = oracle("8s", 21)
    reference = None
    for index, form in enumerate(FORMS):
        caffemodel(tmp_path / f"{index}.caffemodel", net, **form)
        with open_caffemodel(tmp_path / f"{index}.caffemodel") as (name, layers):
            blobs = {layer.name: [np.array(b, np.float32).ravel() for b in layer.blobs] for layer in layers}
            types = {layer.name: layer.type for layer in layers}
        assert name == "FCN" and types["upscore8"] == "Deconvolution" and types["fc6"] == "Convolution"
        if reference is None:
            reference = blobs
        assert blobs.keys() == reference.keys()
        for key_, values in blobs.items():
            for got, want in zip(values, reference[key_], strict=True):
                np.testing.assert_array_equal(got, want)


def test_packed_values_are_read_in_place_not_copied(tmp_path):
    caffemodel(tmp_path / "net.caffemodel", oracle("32s", 21))
    with open_caffemodel(tmp_path / "net.caffemodel") as (_, layers):
        fc6 = next(layer for layer in layers if layer.name == "fc6").blobs[0]
        # A read-only view on the mapped file: a 500 MB model is not held twice while it is converted.
        assert not fc6.flags.owndata and not fc6.flags.writeable and fc6.shape == (512, 64, 7, 7)


def test_missing_layers_and_wrong_shapes_are_one_clear_message(tmp_path):
    net = oracle("16s", 21)
    del net.score_pool4  # a file without score_pool4
    caffemodel(tmp_path / "missing.caffemodel", net)
    with pytest.raises(WeightsError, match=r"missing.caffemodel does not hold voc-fcn16s: .*missing \(2\): "
                                           r"score_pool4.weight, score_pool4.bias"):
        fcn_from_caffemodel(tmp_path / "missing.caffemodel", "voc-fcn16s")
    net = oracle("32s", 21)
    net.fc7 = torch.nn.Conv2d(512, 100, 1)  # 100 outputs where the net has 512 (at width 1/8)
    caffemodel(tmp_path / "shape.caffemodel", net)
    with pytest.raises(WeightsError, match=r"wrong shape .*fc7.weight"):
        fcn_from_caffemodel(tmp_path / "shape.caffemodel", "voc-fcn32s")
    caffemodel(tmp_path / "classes.caffemodel", oracle("32s", 21))
    with pytest.raises(WeightsError, match=r"scores 21 classes, but pascalcontext-fcn32s has 60"):
        fcn_from_caffemodel(tmp_path / "classes.caffemodel", "pascalcontext-fcn32s")


def test_the_at_once_net_needs_its_scale_layers(tmp_path):
    caffemodel(tmp_path / "staged.caffemodel", oracle("8s", 21))
    with pytest.raises(WeightsError, match="lacks the at-once net's scale_pool3, scale_pool4"):
        fcn_from_caffemodel(tmp_path / "staged.caffemodel", "voc-fcn8s-atonce")
    caffemodel(tmp_path / "atonce.caffemodel", oracle("8s_atonce", 21))
    with pytest.raises(WeightsError, match="scale_pool4 layer, which only the at-once FCN-8s has"):
        fcn_from_caffemodel(tmp_path / "atonce.caffemodel", "voc-fcn8s")


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b"hello, not a model\n" * 9,
                                     bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))])
def test_other_files_are_refused_clearly(tmp_path, content):
    path = tmp_path / "x.caffemodel"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=r"x.caffemodel is (empty, )?not a Caffe model"):
        fcn_from_caffemodel(path, "voc-fcn8s")


def test_a_single_stream_file_is_not_taken_for_the_colour_hha_net(tmp_path):
    caffemodel(tmp_path / "color.caffemodel", oracle("32s", 40))
    with pytest.raises(WeightsError, match="has no score_frcolor, score_frhha layer: is it the right file"):
        fcn_from_caffemodel(tmp_path / "color.caffemodel", "nyud-fcn32s-color-hha")


def test_a_voc_file_is_not_taken_for_a_siftflow_net(tmp_path):
    caffemodel(tmp_path / "voc.caffemodel", oracle("8s", 21))
    with pytest.raises(WeightsError, match="has no score_fr_sem and no score_fr_geo layer, which siftflow-fcn8s has"):
        fcn_from_caffemodel(tmp_path / "voc.caffemodel", "siftflow-fcn8s")
    caffemodel(tmp_path / "heads.caffemodel", oracle("8s", 33, heads=(4,)))
    with pytest.raises(WeightsError, match=r"scores 33 \+ 4 classes, but siftflow-fcn8s has 33 \+ 3"):
        fcn_from_caffemodel(tmp_path / "heads.caffemodel", "siftflow-fcn8s")


def test_cli_convert_and_predict(tmp_path, capsys):
    from PIL import Image

    from fcnseg.api import load

    caffemodel(tmp_path / "fcn8s.caffemodel", oracle("8s", 21))
    assert main(["convert", str(tmp_path / "fcn8s.caffemodel"), "--out", str(tmp_path / "a.pth")]) == 2
    assert "say which net it holds with --model" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "fcn8s.caffemodel"), "--model", "voc-fcn8s", "--out",
                 str(tmp_path / "voc.pth")]) == 0
    segmenter = load(tmp_path / "voc.pth", device="cpu")
    assert segmenter.info.name == "voc" and segmenter.normalization == "caffe"
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    assert segmenter.predict(tmp_path / "a.png").shape == (40, 56)


def test_download_fetches_a_net_and_says_it_is_unverified(tmp_path, http_server, monkeypatch, capsys):
    import fcnseg.models.zoo as zoo

    server = http_server()
    caffemodel(server.folder / "fcn8s-heavy-pascal.caffemodel", oracle("8s", 21))
    monkeypatch.setitem(zoo.CAFFE_NETS, "voc-fcn8s", {**zoo.CAFFE_NETS["voc-fcn8s"],
                                                      "url": f"{server.url}/fcn8s-heavy-pascal.caffemodel"})
    assert main(["download", "voc-fcn8s", "--root", str(tmp_path / "models"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    path = tmp_path / "models" / "fcn8s-heavy-pascal.caffemodel"
    assert out.strip() == str(path) and path.read_bytes() == (server.folder / path.name).read_bytes()
    assert "published no checksum for voc-fcn8s" in err and "--model voc-fcn8s" in err
    assert main(["download", "voc-fcn9s", "--root", str(tmp_path)]) == 2
    assert "the authors' nets: voc-fcn32s" in capsys.readouterr().err


def test_a_file_of_another_stride_names_the_net_it_holds(tmp_path):
    caffemodel(tmp_path / "sf16.caffemodel", oracle("16s", 33, heads=(3,)))
    with pytest.raises(WeightsError, match="holds an FCN-16s net, but siftflow-fcn8s is an FCN-8s: is it "
                                           "siftflow-fcn16s?"):
        fcn_from_caffemodel(tmp_path / "sf16.caffemodel", "siftflow-fcn8s")
