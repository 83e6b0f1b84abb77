import pytest
import torch

from fcnseg import export
from fcnseg.checkpoint import save_model
from fcnseg.cli import main
from fcnseg.data.info import DatasetInfo
from fcnseg.errors import WeightsError

from .helpers import error_names, random_fcn, refused

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# Traced at 1 x 64 x 64 (export.TRACE_SHAPE); checked at other batches, other residues mod 32, tiny inputs.
UNTRACED_SHAPES = [(2, 3, 37, 53), (2, 3, 96, 128), (2, 3, 1, 1), (2, 3, 2, 3), (2, 3, 33, 31)]
ROADS = DatasetInfo("my_roads", ("void", "road", "lane"), ((0, 0, 0), (128, 64, 128), (255, 255, 0)),
                    ignore_index=7)


# Tiny nets on a shared 2-core machine: extra intra-op threads only wait on each other.
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(name="fcn8s", geometry="fast", backbone="vgg16", seed=0, **spec_fields):
    # Random score layers too: at zero (as built) every output would be 0 and any comparison would pass.
    return random_fcn(name, backbone=backbone, num_classes=ROADS.num_classes, geometry=geometry, seed=seed,
                      **spec_fields)


def assert_matches(forward, model, shapes=UNTRACED_SHAPES):
    for shape in shapes:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            expected = model(x)
            got = forward(x)
        assert got.shape == expected.shape == (shape[0], ROADS.num_classes, *shape[2:])
        assert expected.std() > 1e-3  # a real comparison, not of constant maps
        assert (got - expected).abs().max() <= 1e-4, shape


@pytest.mark.parametrize("name,geometry,backbone", [
    ("fcn32s", "fast", "vgg16"), ("fcn16s", "fast", "vgg16"), ("fcn8s", "fast", "vgg16"),
    ("fcn8s", "reference", "vgg16"), ("fcn8s_atonce", "reference", "vgg16"),
    # fast geometry with constant padding besides the size-dependent part: top/left 6 (GoogLeNet), extra 19.
    ("fcn16s", "fast", "googlenet"), ("fcn32s", "fast", "alexnet"),
])
def test_onnx_matches_torch_at_untraced_sizes(tmp_path, name, geometry, backbone):
    model = tiny_model(name, geometry, backbone)
    path = export.export_onnx(save_model(model, ROADS, tmp_path / "model.pth"), tmp_path / "model.onnx")
    forward, _ = export.load_onnx(path, threads=1)
    assert_matches(forward, model)


def test_onnx_metadata_round_trip(tmp_path):
    model = tiny_model(normalization="caffe")  # as for the authors' converted weights
    path = export.export_onnx(save_model(model, ROADS, tmp_path / "model.pth"), tmp_path / "out" / "model.onnx")
    forward, spec = export.load_onnx(path)
    assert spec == model.spec.replace(classes=ROADS) and forward.spec == spec
    assert spec.normalization == ("caffe",)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write leaves no temporary file behind


def test_onnx_export_of_a_module_needs_info_and_overrides(tmp_path):
    model = tiny_model(geometry="reference")
    with pytest.raises(ValueError, match="info="):  # the module's spec names no classes
        export.export_onnx(model, tmp_path / "model.onnx")
    with pytest.raises(ValueError) as caught:
        export.export_onnx(model, tmp_path / "model.onnx", info=DatasetInfo("two", ("a", "b"), ((0, 0, 0),) * 2))
    error_names(caught, "two", "2", "3")  # the dataset, its classes and the model's
    model.train()
    path = export.export_onnx(model, tmp_path / "model.onnx", info=ROADS)
    assert model.training  # the caller's mode is restored
    forward, spec = export.load_onnx(path)
    assert (spec.classes, spec.normalization_text) == (ROADS, "imagenet")
    assert model.spec.classes is None  # the caller's net keeps its own spec
    assert_matches(forward, model.eval(), UNTRACED_SHAPES[:1])


def test_export_refuses_a_graph_that_bakes_in_the_traced_size(tmp_path, monkeypatch):
    # A Python branch on the input size is recorded for the traced 64 x 64 only (here: never taken).
    model = tiny_model(geometry="fast")
    plain_forward = type(model).forward

    def size_dependent(self, image):
        if image.shape[-1] % 32:
            image = image * 2
        return plain_forward(self, image)

    monkeypatch.setattr(type(model), "forward", size_dependent)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(export.ExportError) as caught:
        export.export_onnx(model, path, info=ROADS)
    error_names(caught, "2x3x37x53", path)  # the size it fails at, and the file (not written: checked below)
    with pytest.raises(export.ExportError, match="untraced"):
        export.export_torchscript(model, tmp_path / "model.ts", info=ROADS)
    assert path.read_bytes() == b"previous export"
    assert not (tmp_path / "model.ts").exists()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("geometry", ["fast", "reference"])
def test_torchscript_matches_torch_at_untraced_sizes(tmp_path, geometry):
    model = tiny_model("fcn8s", geometry)
    path = export.export_torchscript(save_model(model, ROADS, tmp_path / "model.pth"), tmp_path / "model.ts")
    module, spec = export.load_torchscript(path)
    assert spec == model.spec.replace(classes=ROADS)
    assert isinstance(module, torch.jit.ScriptModule) and not module.training
    assert_matches(module, model, UNTRACED_SHAPES[:3])


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # scripting the foreign archive
def test_load_errors(tmp_path):
    for load, path, names in ((export.load_onnx, tmp_path / "missing.onnx", ("not found",)),
                              (export.load_torchscript, tmp_path / "missing.ts", ("not found",)),
                              (export.load_onnx, tmp_path / "notes.onnx", ("ONNX",)),
                              (export.load_torchscript, tmp_path / "notes.onnx", ("TorchScript",))):
        if path.name == "notes.onnx":
            path.write_text("not a model")
        with pytest.raises(WeightsError) as caught:
            load(path)
        error_names(caught, path, *names)  # the file, and what it is not
    # A valid ONNX model from elsewhere: no fcnseg metadata, so no classes or normalisation to go by.
    helper = onnx.helper
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g",
                              [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3, 4, 4])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(foreign))
    with pytest.raises(WeightsError) as caught:
        export.load_onnx(foreign)
    error_names(caught, foreign, "metadata", "fcnseg export")  # the file, what it lacks, how to make one
    # A TorchScript archive from elsewhere, likewise.
    plain = tmp_path / "plain.ts"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(plain))
    with pytest.raises(WeightsError) as caught:
        export.load_torchscript(plain)
    error_names(caught, plain, "metadata", "fcnseg export")


def test_onnx_forward_checks_its_input(tmp_path):
    forward, _ = export.load_onnx(export.export_onnx(tiny_model(), tmp_path / "m.onnx", info=ROADS))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        forward(torch.zeros(3, 8, 8))


def cli(argv):
    return main(["export", *map(str, argv)])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_cli_exports_and_reports_parity(tmp_path, capsys, fmt):
    checkpoint = save_model(tiny_model(geometry="fast"), ROADS, tmp_path / "model.pth")
    out = tmp_path / f"model.{fmt}"
    assert cli([checkpoint, "--format", fmt, "--out", out, "--check-sizes", "37x53", "20X30"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "3 classes of my_roads" in printed
    rows = [line.split() for line in printed.splitlines() if line.strip().startswith(("37x53", "20x30"))]
    assert [row[0] for row in rows] == ["37x53", "20x30"]
    assert all(float(row[1]) <= 1e-4 for row in rows)
    assert out.is_file()


def test_cli_rejects_bad_sizes(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli([tmp_path / "model.pth", "--out", tmp_path / "m.onnx", "--check-sizes", "224by224"])
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # argparse: usage, then the line naming the value
    assert "224by224" in last and "HEIGHTxWIDTH" in last, last
    refused(capsys, ["export", tmp_path / "model.pth", "--out", tmp_path / "m.onnx"], tmp_path / "model.pth",
            "not found")
