import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import fcnseg.train.loop as loop
from fcnseg.checkpoint import checkpoint_spec, read_checkpoint, save_model
from fcnseg.data.base import SegmentationDataset
from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.errors import ConfigError, TrainingError
from fcnseg.models import build_model
from fcnseg.train import TrainConfig, train
from fcnseg.train.data import EpochSampler
from fcnseg.train.run import build_optimizer, lr_factor

from .helpers import error_names, mentions, overfit_config, shapes_dataset

TINY = {"backbone": "vgg16", "width": 1 / 16, "geometry": "fast", "dataset": "synthetic",
        "dataset_options": {"num_images": 12, "height": 48, "width": 64}, "batch_size": 4, "workers": 0,
        "optimizer": "sgd", "lr": 0.05, "iterations": 4, "val_interval": 4, "checkpoint_interval": 2,
        "log_interval": 1, "crop_size": [40, 48], "scale_range": [0.75, 1.25], "threads": 1}


def _config(tmp_path, name="run", **changes):
    return TrainConfig.from_dict({**TINY, "out": str(tmp_path / name), **changes})


def _weights(path):
    return read_checkpoint(path)["model_state_dict"]


def test_a_resume_does_not_read_the_starting_net_again(tmp_path, monkeypatch):
    """A resume read init_from again: gone, the run could not resume ("checkpoint not found"); replaced by another
    net, it resumed with that net's normalisation and weights in play (found by a hostile review)."""
    start = tmp_path / "start.pth"
    save_model(build_model("fcn8s", backbone="vgg16", width=0.0625, geometry="fast", num_classes=8,
                           normalization="caffe"), SYNTHETIC_ROADS, start)
    options = {"init_from": str(start), "iterations": 4}
    straight = train(_config(tmp_path, "straight", **options))
    calls, original = {"n": 0}, SegmentationDataset.__getitem__

    def dying(self, index):
        calls["n"] += 1
        if calls["n"] > 2 * 4 + 2:  # killed during iteration 3, after the iteration-2 checkpoint
            raise KeyboardInterrupt("killed")
        return original(self, index)

    monkeypatch.setattr(SegmentationDataset, "__getitem__", dying)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, "killed", **options))
    monkeypatch.setattr(SegmentationDataset, "__getitem__", original)
    start.unlink()  # the staged run's starting checkpoint, deleted or replaced since
    resumed = train(_config(tmp_path, "killed", resume=True, **options))
    assert resumed["iterations"] == 4 and resumed["scores"]["mean_iu"] == straight["scores"]["mean_iu"]
    for key, value in _weights(tmp_path / "straight" / "last.pth").items():
        assert torch.equal(value, _weights(tmp_path / "killed" / "last.pth")[key]), key


def test_how_often_validation_runs_does_not_change_the_weights(tmp_path):
    """val_interval is an option a resume may change, said not to change what is computed; but validation's loader
    drew its seed from torch's generator, so dropout differed afterwards (77 of 104 tensors, found by a hostile
    review)."""
    for name, interval in (("often", 1), ("once", 4)):
        train(_config(tmp_path, name, val_interval=interval, dropout=0.5))
    for key, value in _weights(tmp_path / "often" / "last.pth").items():
        assert torch.equal(value, _weights(tmp_path / "once" / "last.pth")[key]), key


def test_training_writes_config_checkpoints_and_log(tmp_path):
    result = train(_config(tmp_path, model="fcn8s"))
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == "fcn8s"
    assert read_checkpoint(run / "last.pth")["iteration"] == 4
    assert (run / "best.pth").is_file()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,epoch,loss") and len(rows) == 1 + 4 + 1  # 4 steps + 1 validation
    # The validation scored every pixel of the 12 validation scenes, and the log holds its numbers.
    scores = result["scores"]
    assert sum(map(sum, scores["confusion"])) == 12 * 48 * 64 and scores["num_images"] == 12
    assert [float(v) for v in rows[-1].split(",")[5:]] == pytest.approx(
        [scores[k] for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")], abs=1e-6)


@pytest.mark.parametrize("ema_decay", [None, 0.5])
def test_resume_after_kill_continues_exactly(tmp_path, monkeypatch, ema_decay):
    straight = train(_config(tmp_path, "straight", ema_decay=ema_decay))
    assert straight["iterations"] == 4

    # Kill the second run during iteration 3 (after the iteration-2 checkpoint), then resume it.
    calls = {"n": 0}
    original = SegmentationDataset.__getitem__

    def dying(self, index):
        calls["n"] += 1
        if calls["n"] > 2 * 4 + 2:  # two full batches of 4, then 2 samples into the third
            raise KeyboardInterrupt("killed")
        return original(self, index)

    monkeypatch.setattr(SegmentationDataset, "__getitem__", dying)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, "killed", ema_decay=ema_decay))
    assert read_checkpoint(tmp_path / "killed" / "last.pth")["iteration"] == 2
    monkeypatch.setattr(SegmentationDataset, "__getitem__", original)
    resumed = train(_config(tmp_path, "killed", resume=True, ema_decay=ema_decay))
    assert resumed["iterations"] == 4

    # The net (the moving average with ema_decay) and, with it, the training weights: as never interrupted.
    straight_state, killed_state = (read_checkpoint(tmp_path / name / "last.pth") for name in ("straight", "killed"))
    for part in ("model_state_dict", "train_state_dict") if ema_decay else ("model_state_dict",):
        for key, value in straight_state[part].items():
            assert torch.equal(value, killed_state[part][key]), (part, key)
    assert resumed["scores"]["mean_iu"] == straight["scores"]["mean_iu"]
    # The log has each iteration once, as if never interrupted.
    iterations = [row.split(",")[0] for row in (tmp_path / "killed" / "metrics.csv").read_text().splitlines()[1:]]
    assert iterations == ["1", "2", "3", "4", "4"]


def test_ema_is_what_is_validated_and_saved_and_leaves_training_alone(tmp_path, monkeypatch):
    train(_config(tmp_path, "plain"))
    validated = []
    original = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda forward, *args, **kwargs: validated.append(
        {k: v.clone() for k, v in forward.state_dict().items()}) or original(forward, *args, **kwargs))
    train(_config(tmp_path, "ema", ema_decay=0.5))
    state = read_checkpoint(tmp_path / "ema" / "last.pth")
    # The average does not feed back: the training weights are those of the run without it.
    for key, value in _weights(tmp_path / "plain" / "last.pth").items():
        assert torch.equal(state["train_state_dict"][key], value), key
    # The net saved and validated (at the last iteration) is the average, not the training weights.
    averaged, trained = state["model_state_dict"], state["train_state_dict"]
    assert any(not torch.equal(value, trained[key]) for key, value in averaged.items())
    assert len(validated) == 1
    for key, value in state["model_state_dict"].items():
        assert torch.equal(validated[0][key], value), key


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path):
    train(_config(tmp_path, iterations=2))
    with pytest.raises(TrainingError, match="--resume"):
        train(_config(tmp_path, iterations=2))


def test_nan_loss_stops_with_the_last_good_checkpoint_intact(tmp_path, monkeypatch):
    original = loop.segmentation_loss
    steps = {"n": 0}

    def poisoned(*args, **kwargs):
        steps["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if steps["n"] == 3 else loss

    monkeypatch.setattr(loop, "segmentation_loss", poisoned)
    with pytest.raises(TrainingError) as caught:
        train(_config(tmp_path))
    error_names(caught, "nan", "iteration 3", tmp_path / "run" / "last.pth")  # what, when, and what is left
    state = read_checkpoint(tmp_path / "run" / "last.pth")
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model_state_dict"].values() if v.is_floating_point())


def test_paper_recipe_groups_and_lr():
    config = TrainConfig.from_dict({"recipe": "paper", "model": "fcn16s"})
    assert config.resolved_lr() == 1e-12
    model = build_model("fcn16s", backbone="vgg16", num_classes=3, width=1 / 16)
    optimizer = build_optimizer(model, config)
    weights, biases = optimizer.param_groups
    assert optimizer.defaults["momentum"] == 0.99
    assert (weights["lr"], weights["weight_decay"]) == (1e-12, 5e-4)
    assert (biases["lr"], biases["weight_decay"]) == (2e-12, 0.0)
    assert all(p.ndim == 1 for p in biases["params"])
    # Frozen bilinear upsampling is not trained.
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(u.weight) not in trained for u in model.upsamplers())


def test_the_paper_recipe_keeps_its_rate_fixed_and_refuses_what_it_would_ignore():
    # Documented as the authors' fixed rate, it decayed by poly; --momentum 0.5 was recorded in config.yaml while
    # SGD ran at 0.99, and --optimizer adamw ran AdamW at 1e-14: each without a word.
    paper = TrainConfig.from_dict({"recipe": "paper", "iterations": 100})
    assert paper.resolved_schedule() == "constant" and lr_factor(paper, 99) == 1.0
    assert TrainConfig.from_dict({"recipe": "paper", "schedule": "poly"}).resolved_schedule() == "poly"
    assert TrainConfig.from_dict({}).resolved_schedule() == "poly"  # the modern recipe
    with pytest.raises(ConfigError, match="momentum 0.5 would be ignored"):
        TrainConfig.from_dict({"recipe": "paper", "momentum": 0.5})
    with pytest.raises(ConfigError, match="optimizer adamw would not be it"):
        TrainConfig.from_dict({"recipe": "paper", "optimizer": "adamw"})
    assert TrainConfig.from_dict({"recipe": "paper", "momentum": 0.99}).resolved_momentum() == 0.99


def test_an_empty_list_of_class_weights_is_refused():
    # --set class_weights=[] meant "no weights" without a word, where [1, 1] for 8 classes is refused.
    with pytest.raises(ConfigError, match="class_weights is an empty list: give one weight per class"):
        TrainConfig.from_dict({"class_weights": []})


def test_schedule_values():
    config = TrainConfig(iterations=100, warmup_iterations=10, poly_power=0.9)
    assert lr_factor(config, 0) == pytest.approx(0.1)
    assert lr_factor(config, 9) == pytest.approx(1.0)
    assert lr_factor(config, 50) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(TrainConfig(schedule="constant"), 500) == 1.0


def test_config_file_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: fcn16s\nbackbone: alexnet\nwidth: 0.5\n")
    config = TrainConfig.from_yaml(path, width=0.25)
    assert (config.model, config.backbone, config.width) == ("fcn16s", "alexnet", 0.25)
    path.write_text("modle: fcn16s\n")
    with pytest.raises(ValueError) as caught:
        TrainConfig.from_yaml(path)
    error_names(caught, path, "modle", "model")  # the file, the unknown key, the known one it meant
    with pytest.raises(ValueError) as caught:
        TrainConfig.from_dict({"amp": "fp8"})
    error_names(caught, "amp", "'fp8'", "bf16")  # the option, the value, the values it takes


def test_epoch_sampler_shards_and_resumes():
    full = list(EpochSampler(10, seed=3))
    assert sorted(full) == list(range(10))
    ranks = [list(EpochSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(r) == 4 for r in ranks) and set(sum(ranks, [])) == set(range(10))
    sampler = EpochSampler(10, seed=3)
    sampler.set_position(0, start=4)
    assert list(sampler) == full[4:]
    sampler.set_position(1)
    assert list(sampler) != full


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, free_port):
    # A fixed random starting model, so that predictions (and metrics) are not trivial.
    torch.manual_seed(5)
    start = build_model("fcn8s", backbone="vgg16", num_classes=8, width=1 / 16, geometry="fast")
    with torch.no_grad():
        for p in start.parameters():
            p.copy_(torch.randn_like(p) * (2.0 / p[0].numel()) ** 0.5)
    save_model(start, SYNTHETIC_ROADS, tmp_path / "start.pth")
    common = ["train", "--model", "fcn8s", "--backbone", "vgg16", "--width", "0.0625", "--geometry", "fast",
              "--iterations", "2", "--val-interval", "2", "--checkpoint-interval", "2", "--workers", "0",
              "--init-from", str(tmp_path / "start.pth"), "--lr", "0.01", "--quiet",
              "--set", "dropout=0",  # per-rank dropout masks would differ from one process's
              "--set", "flip=false", "--set", "dataset_options={num_images: 16, height: 40, width: 56}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "fcnseg.cli", *common, "--batch-size", "8",
                             "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(free_port),
                             "-m", "fcnseg.cli", *common, "--batch-size", "4", "--out", str(tmp_path / "two")],
                            env=env, capture_output=True, text=True)
    assert double.returncode == 0, double.stderr
    one, two = read_checkpoint(tmp_path / "one" / "last.pth"), read_checkpoint(tmp_path / "two" / "last.pth")
    # 2 ranks x 4 images see the same 8 images per step as 1 x 8: the same updates up to float rounding.
    for key, value in one["model_state_dict"].items():
        torch.testing.assert_close(two["model_state_dict"][key], value, atol=1e-5, rtol=1e-4)
    # Validation is sharded over the ranks without repeats and the confusion matrices summed: the
    # same numbers as one process (to the rounding of weights that agree to 1e-5).
    metrics = [[float(v) for v in Path(tmp_path / name / "metrics.csv").read_text().splitlines()[-1].split(",")[5:]]
               for name in ("one", "two")]
    assert metrics[0] == pytest.approx(metrics[1], abs=1e-4), metrics


@pytest.mark.slow
def test_balanced_weights_reach_every_rank(tmp_path, free_port):
    # The main process computes the weights and sends them: rank 1, left with zero weights, would have a
    # 0/0 (NaN) loss and stop the run; the weights are printed once, by the main process.
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port), "-m", "fcnseg.cli", "train", "--width", "0.0625", "--geometry",
               "fast", "--iterations", "1", "--val-interval", "1", "--workers", "0", "--batch-size", "2",
               "--set", "class_weights=median_frequency",
               "--set", "dataset_options={num_images: 4, height: 40, width: 56}",
               "--out", str(tmp_path / "run")]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("class weights (median_frequency): ") == 1, done.stderr


def test_bf16_channels_last_accumulation_and_tensorboard(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    result = train(_config(tmp_path, amp="bf16", channels_last=True, grad_accum=2, iterations=2, val_interval=2))
    assert result["iterations"] == 2
    weights = _weights(tmp_path / "run" / "last.pth")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    # Two micro-batches per step: 2 steps read 4 batches of 4 from 12 images, so the second epoch begins.
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[2].split(",")[:2] == ["2", "1"]


def test_amp_auto_is_bf16_where_native_else_float32_and_a_resume_across_says_so(tmp_path, monkeypatch, caplog):
    import fcnseg.train.run

    caplog.set_level("INFO", logger="fcnseg")
    monkeypatch.setattr(fcnseg.train.run, "native_bf16", lambda device: False)
    short = {"iterations": 2, "val_interval": 2, "schedule": "constant"}  # a constant rate: it may go on longer
    train(_config(tmp_path, "auto", amp="auto", **short))
    train(_config(tmp_path, "none", amp="none", **short))
    assert "amp auto: float32 on this CPU (no native bfloat16)" in caplog.text
    auto, none = _weights(tmp_path / "auto" / "last.pth"), _weights(tmp_path / "none" / "last.pth")
    assert all(torch.equal(auto[key], none[key]) for key in none)  # float32: the same run, bit for bit
    assert read_checkpoint(tmp_path / "auto" / "last.pth")["amp"] == "none"
    monkeypatch.setattr(fcnseg.train.run, "native_bf16", lambda device: True)  # the run moves to a bf16 machine
    caplog.clear()
    train(_config(tmp_path, "auto", amp="auto", **{**short, "iterations": 4}, resume=True))
    assert "amp auto: bf16 on this CPU (native bfloat16)" in caplog.text
    assert "computed up to iteration 2 otherwise than it goes on here (precision float32 -> bf16; amp auto)" in \
        caplog.text
    assert read_checkpoint(tmp_path / "auto" / "last.pth")["amp"] == "bf16"


def test_a_resume_with_another_thread_count_says_its_weights_will_differ(tmp_path, caplog):
    """--threads is an option a resume may change, and it gave other weights without a word (found by a hostile
    review): parallel sums round differently. Said as a change of precision is."""
    short = {"iterations": 2, "val_interval": 2, "schedule": "constant"}
    train(_config(tmp_path, **short))
    assert read_checkpoint(tmp_path / "run" / "last.pth")["threads"] == 1
    caplog.set_level("WARNING", logger="fcnseg")
    train(_config(tmp_path, **{**short, "iterations": 3, "threads": 2}, resume=True))
    assert "otherwise than it goes on here (threads 1 -> 2; amp none)" in caplog.text
    caplog.clear()
    train(_config(tmp_path, **{**short, "iterations": 4, "threads": 2}, resume=True))  # as it went on: no word
    assert "otherwise" not in caplog.text


def test_amp_auto_refuses_machines_that_resolve_it_differently(tmp_path, monkeypatch):
    import fcnseg.train.run

    monkeypatch.setattr(fcnseg.train.run, "gather_objects", lambda resolved, runtime: [resolved, "bf16", "none"])
    with pytest.raises(TrainingError) as caught:
        train(_config(tmp_path, amp="auto"))
    error_names(caught, "amp auto", "--amp bf16", "--amp none")
    assert not (tmp_path / "run" / "last.pth").exists()


def test_fp16_needs_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(TrainingError) as caught:
        train(_config(tmp_path, amp="fp16"))
    error_names(caught, "fp16", "GPU")


def test_cli_resume_uses_the_runs_own_config(tmp_path):
    from fcnseg.cli import main

    out = str(tmp_path / "cli")
    tiny = ["--set", "dataset_options={num_images: 8, height: 40, width: 48}", "--quiet", "--threads", "1",
            "--workers", "0", "--batch-size", "4", "--set", "schedule=constant"]  # may be lengthened on resume
    assert main(["train", "--model", "fcn16s", "--width", "0.0625", "--geometry", "fast", "--iterations", "2",
                 "--val-interval", "2", "--out", out, *tiny]) == 0
    # No model options this time: they come from the run's config.yaml.
    assert main(["train", "--out", out, "--resume", "--iterations", "3"]) == 0
    state = read_checkpoint(tmp_path / "cli" / "last.pth")
    spec = checkpoint_spec(state)
    assert state["iteration"] == 3 and spec.name == "fcn16s" and spec.width == 0.0625


def test_a_tiny_fcn8s_overfits_four_images(tmp_path):
    """The whole training loop learns: on its own four training images the loss falls 10x, mean IU > 0.9."""
    root = shapes_dataset(tmp_path / "shapes")
    config = overfit_config(root, tmp_path / "run", iterations=150, log_interval=1)
    result = train(config)
    rows = [row.split(",") for row in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    losses = [float(row[2]) for row in rows if row[2]]
    assert len(losses) == 150
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
    assert result["scores"]["mean_iu"] > 0.9, result["scores"]["per_class_iou"]


def test_fine_tuning_a_checkpoint_to_another_class_set(tiny_checkpoint, tmp_path, capsys):
    from fcnseg.cli import main

    from .helpers import folder_dataset

    root = folder_dataset(tmp_path / "data", classes=3)
    (root / "classes.txt").write_text("road\nwater\nsky\n")  # two of them are classes of the checkpoint
    argv = ["train", "--dataset", "folder", "--root", str(root), "--set", "train_split=all", "--set",
            "val_split=all", "--init-from", str(tiny_checkpoint), "--model", "fcn8s", "--width", "0.0625",
            "--geometry", "fast", "--iterations", "1", "--batch-size", "2", "--workers", "0", "--threads", "1",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    err = capsys.readouterr().err  # a note: the two class counts, and the classes whose weights carry over
    assert all(mentions(err, name) for name in ("8 classes", "3", "road, sky")), err
    trained = checkpoint_spec(read_checkpoint(tmp_path / "run" / "last.pth"))
    assert trained.classes.class_names == ("road", "water", "sky")


def test_ema_update_by_hand():
    from fcnseg.train.ema import ema_copy, update_ema, warmed_up_decay

    # The decay warms up as min(decay, (1 + n) / (10 + n)): 0.1 at the first update, 0.999 from n = 8990.
    assert warmed_up_decay(0.999, 0) == 0.1 and warmed_up_decay(0.75, 26) == 0.75
    assert warmed_up_decay(0.999, 8989) < 0.999 == warmed_up_decay(0.999, 8990)
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    average = ema_copy(model)
    assert not average.training and not any(p.requires_grad for p in average.parameters())
    for updates, weight in ((0, 12.0), (30, 6.0), (31, 10.0)):
        with torch.no_grad():
            model[0].weight.fill_(weight)
        model[1].num_batches_tracked += 3
        model[1].running_mean.fill_(weight)
        update_ema(average, model, decay=0.75, updates=updates)
    # update 0 (d = 0.1): 0.1 * 2 + 0.9 * 12 = 11; then d = 0.75: 0.75 * 11 + 0.25 * 6 = 9.75,
    # 0.75 * 9.75 + 0.25 * 10 = 9.8125. The running mean: 0 -> 10.8 -> 9.6 -> 9.7
    assert average[0].weight.item() == pytest.approx(9.8125, abs=1e-6)
    assert average[1].running_mean.item() == pytest.approx(9.7, abs=1e-6)
    assert average[1].num_batches_tracked.item() == 9  # counts are copied, not averaged


def test_freed_memory_is_kept_for_reuse():
    # A 64 MB buffer written then freed: by default glibc returns it to the system (it is mapped afresh,
    # and its pages zero-filled again, at the next allocation); after keep_freed_memory the process keeps
    # it for reuse, so its resident size stays up by the buffer.
    code = """
import os, sys
import numpy as np
from fcnseg.runtime import keep_freed_memory

def kept_after_free():
    resident = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    before = resident()
    buffer = np.ones(8 << 20)  # 64 MB, every page written
    del buffer
    return (resident() - before) >> 20

default = kept_after_free()
if not keep_freed_memory():
    sys.exit(3)  # not glibc
print(default, kept_after_free())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode == 3:
        pytest.skip("the C library is not glibc")
    assert done.returncode == 0, done.stderr
    default, kept = map(int, done.stdout.split())
    assert default < 8 and kept >= 60, (default, kept)


def test_training_flushes_denormal_numbers_to_zero_and_stops_after(tmp_path, monkeypatch):
    # 1e-39 is below float32's smallest normal number: flushed, it computes as 0 (a slow microcode path on x86
    # otherwise); training runs in that mode and leaves it as it found it (torch's default, off).
    from fcnseg.runtime import flush_denormals
    from fcnseg.train import loop

    denormal = torch.tensor([1e-39])
    with flush_denormals() as supported:
        if not supported:
            pytest.skip("this CPU has no flush-to-zero mode")
        assert (denormal * 1.0).item() == 0.0
    assert (denormal * 1.0).item() == pytest.approx(1e-39, rel=1e-3)
    seen = []
    monkeypatch.setattr(loop, "run_iterations", lambda run, *rest: seen.append((denormal * 1.0).item()) or {})
    train(_config(tmp_path, "flushed", iterations=1))
    assert seen == [0.0] and (denormal * 1.0).item() > 0
