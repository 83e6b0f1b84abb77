"""The CUDA, NCCL and fp16 paths on a real GPU: skipped where there is none (CI), run by scripts/gpu_check.sh
on a machine that has one. Their logic also has CPU tests; these show the code runs on the device."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fcnseg
from fcnseg.checkpoint import read_checkpoint, save_model
from fcnseg.cli import main
from fcnseg.data.base import SegmentationDataset
from fcnseg.data.info import SYNTHETIC_ROADS, VOC
from fcnseg.inference import InferenceOptions
from fcnseg.memory import inference_bytes
from fcnseg.train import TrainConfig, train

from .helpers import random_fcn, write_png

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TRAIN = ["train", "--dataset", "synthetic", "--model", "fcn8s", "--width", "0.0625", "--geometry", "fast",
         "--batch-size", "2", "--lr", "0.01", "--val-limit", "4", "--workers", "0", "--quiet"]


def last_row(run: Path) -> dict[str, str]:
    return list(csv.DictReader((run / "metrics.csv").open()))[-1]


def test_a_net_predicts_on_the_gpu_what_it_predicts_on_the_cpu(tmp_path):
    # cuDNN may convolve in TF32 (10-bit mantissa): logits differ a little, labels almost never.
    path = save_model(random_fcn("fcn8s", num_classes=8, width=0.25), SYNTHETIC_ROADS, tmp_path / "net.pth")
    image = write_png(tmp_path / "a.png", size=(120, 160))
    cpu = fcnseg.load(path, device="cpu").predict_probs(image)
    gpu_segmenter = fcnseg.load(path, device="cuda")
    assert next(gpu_segmenter.model.parameters()).device.type == "cuda"
    gpu = gpu_segmenter.predict_probs(image)
    assert np.abs(gpu - cpu).max() < 2e-2
    assert (gpu.argmax(0) == cpu.argmax(0)).mean() > 0.99


def test_training_on_the_gpu_scores_the_same_when_evaluated_on_the_cpu(tmp_path):
    run, report = tmp_path / "run", tmp_path / "report"
    assert main([*TRAIN, "--iterations", "20", "--val-interval", "20", "--device", "cuda", "--out", str(run)]) == 0
    assert main(["eval", str(run / "last.pth"), "--dataset", "synthetic", "--limit", "4", "--device", "cpu",
                 "--workers", "0", "--quiet", "--out", str(report)]) == 0
    scores = json.loads((report / "metrics.json").read_text())
    assert float(last_row(run)["mean_iu"]) == pytest.approx(scores["mean_iu"], abs=0.5)


TINY = {"backbone": "vgg16", "width": 1 / 16, "geometry": "fast", "dataset": "synthetic",
        "dataset_options": {"num_images": 12, "height": 48, "width": 64}, "batch_size": 4, "workers": 0,
        "optimizer": "sgd", "lr": 0.05, "iterations": 4, "val_interval": 4, "checkpoint_interval": 2,
        "log_interval": 1, "crop_size": [40, 48], "device": "cuda"}


def _config(tmp_path, name, **changes):
    return TrainConfig.from_dict({**TINY, "out": str(tmp_path / name), **changes})


@pytest.mark.parametrize("amp", ["none", "fp16", "bf16"])
def test_training_on_the_gpu_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch, amp):
    # As tests/test_train.py on the CPU: kill during iteration 3 (after the iteration-2 checkpoint), resume.
    # Reported, not assumed, on CUDA: some kernels (atomics in backward passes) are not bit-reproducible.
    straight = train(_config(tmp_path, "straight", amp=amp))
    calls = {"n": 0}
    original = SegmentationDataset.__getitem__

    def dying(self, index):
        calls["n"] += 1
        if calls["n"] > 2 * 4 + 2:
            raise KeyboardInterrupt("killed")
        return original(self, index)

    monkeypatch.setattr(SegmentationDataset, "__getitem__", dying)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, "killed", amp=amp))
    monkeypatch.setattr(SegmentationDataset, "__getitem__", original)
    resumed = train(_config(tmp_path, "killed", amp=amp, resume=True))
    a, b = (read_checkpoint(tmp_path / name / "last.pth") for name in ("straight", "killed"))
    if amp == "fp16":
        assert a["scaler"] and a["scaler"]["scale"] > 0, "the grad scaler's state is saved to resume"
    assert all(torch.isfinite(v).all() for v in a["model_state_dict"].values() if v.is_floating_point())
    worst = max(float((v.float() - b["model_state_dict"][k].float()).abs().max())
                for k, v in a["model_state_dict"].items())
    print(f"amp {amp}: largest weight difference, resumed vs uninterrupted on CUDA: {worst:.3g}; "
          f"mean IU {straight['scores']['mean_iu']:.4f} vs {resumed['scores']['mean_iu']:.4f}")
    assert worst == 0.0


def test_torchrun_on_nccl_with_sync_batch_norm(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29533",
               "-m", "fcnseg.cli", *TRAIN, "--backbone", "vgg16_bn", "--iterations", "6", "--val-interval", "6",
               "--device", "cuda", "--out", str(run)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    segmenter = fcnseg.load(run / "last.pth", device="cpu")  # DDP's module. prefix and SyncBatchNorm are gone
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in segmenter.model.modules())
    assert segmenter.predict(np.zeros((40, 48, 3), np.uint8)).shape == (40, 48)


def test_the_inference_memory_estimate_bounds_what_the_gpu_allocates(tmp_path):
    model = random_fcn("fcn8s", num_classes=21, width=1.0)
    path = save_model(model, VOC, tmp_path / "net.pth")
    segmenter = fcnseg.load(path, device="cuda")
    image = np.random.default_rng(0).integers(0, 256, (500, 500, 3), dtype=np.uint8)
    segmenter.predict(image)  # warm-up: cuDNN's workspace choice
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    segmenter.predict(image)
    measured = torch.cuda.max_memory_allocated() - base
    estimate = inference_bytes(segmenter.spec, 1, 500, 500, InferenceOptions())
    print(f"fcn8s vgg16 500x500 on CUDA: allocated {measured / 2**20:.0f} MiB above the weights, "
          f"estimate {estimate / 2**20:.0f} MiB")
    assert measured <= estimate
