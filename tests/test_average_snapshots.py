"""scripts/average_snapshots.py: averaging a run's training weights over its copies of last.pth."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fcnseg.checkpoint import model_checkpoint, model_from_checkpoint, write_checkpoint
from fcnseg.data.info import CAMVID

from .helpers import REPO, load_script, random_fcn


@pytest.fixture(scope="module")
def averaging():
    return load_script(REPO / "scripts" / "average_snapshots.py")


def write_snapshot(path: Path, iteration: int, fill: float, seed: int = 0) -> Path:
    """A run's last.pth at ``iteration`` whose training net has every float entry equal to ``fill`` (and an
    EMA net of random weights, which the average must not read)."""
    ema, trained = random_fcn(num_classes=11, width=1 / 32), random_fcn(num_classes=11, width=1 / 32)
    state = trained.state_dict()
    for value in state.values():
        value.fill_(fill) if value.is_floating_point() else value.fill_(iteration)
    training = {"iteration": iteration, "train_state_dict": state, "optimizer": {}, "config": {"seed": seed}}
    return write_checkpoint(model_checkpoint(ema, CAMVID, **training), path)


def test_shares_of_a_plain_mean_and_of_exponential_weights(averaging):
    assert averaging.averaging_weights([500, 1000, 1500, 2000], 1000, None) == [0, 1 / 3, 1 / 3, 1 / 3]
    shares = averaging.averaging_weights([1000, 1500, 2000], None, 0.999)
    raw = [0.999 ** 1000, 0.999 ** 500, 1]
    assert shares == pytest.approx([w / sum(raw) for w in raw], rel=1e-12)
    with pytest.raises(averaging.ConfigError, match="no snapshot at iteration 2500 or later"):
        averaging.averaging_weights([500, 1000], 2500, None)


def test_the_average_of_snapshots_from_an_iteration_on_is_their_mean(averaging, tmp_path):
    paths = [write_snapshot(tmp_path / f"s{i}.pth", it, fill) for i, (it, fill) in
             enumerate([(500, 100.0), (1000, 1.0), (1500, 2.0), (2000, 6.0)])]
    copy_of_last = write_snapshot(tmp_path / "again.pth", 2000, 6.0)  # the same iteration copied twice counts once
    out = tmp_path / "avg.pth"
    assert averaging.main([*map(str, paths), str(copy_of_last), "--from", "1000", "--out", str(out)]) == 0
    model, _ = model_from_checkpoint(out)
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, torch.full_like(value, 3.0)), name  # (1 + 2 + 6) / 3
        else:
            assert int(value.flatten()[0]) == 2000, name  # integer entries: the last snapshot's


def test_an_existing_output_is_kept_and_a_bad_decay_refused_in_one_line(averaging, tmp_path, capsys):
    snapshot = write_snapshot(tmp_path / "s.pth", 500, 1.0)
    out = tmp_path / "mine.pth"
    out.write_bytes(b"the user's file")
    assert averaging.main([str(snapshot), "--from", "0", "--out", str(out)]) == 2
    assert out.read_bytes() == b"the user's file"
    refusal = (f"average_snapshots: {out} already exists and was not written by an earlier fcnseg average_snapshots: "
               "choose another --out, or pass --overwrite to replace it\n")
    assert capsys.readouterr().err == refusal
    assert averaging.main([str(snapshot), "--from", "0", "--out", str(snapshot)]) == 2  # its own input
    assert "would write over its own input" in capsys.readouterr().err
    assert averaging.main([str(snapshot), "--ema", "1.5", "--out", str(tmp_path / "new.pth")]) == 2
    assert capsys.readouterr().err == "average_snapshots: --ema must be in (0, 1), got 1.5\n"
    averaged = tmp_path / "averaged.pth"  # a net checkpoint (an average's output) is not a snapshot
    assert averaging.main([str(snapshot), "--from", "0", "--out", str(averaged)]) == 0
    other_run = write_snapshot(tmp_path / "other.pth", 1000, 2.0, seed=1)
    assert averaging.main([str(snapshot), str(other_run), "--from", "0", "--out", str(tmp_path / "mixed.pth")]) == 2
    assert capsys.readouterr().err.endswith("the snapshots come from 2 runs of different configs; give one run's\n")
    # Two runs' copies at the same iteration are refused too, not one of them silently dropped.
    same_iteration = write_snapshot(tmp_path / "other_500.pth", 500, 2.0, seed=1)
    assert averaging.main([str(snapshot), str(same_iteration), "--from", "0", "--out", str(tmp_path / "m2.pth")]) == 2
    assert capsys.readouterr().err.endswith("the snapshots come from 2 runs of different configs; give one run's\n")
    assert averaging.main([str(averaged), "--from", "0", "--out", str(tmp_path / "again.pth")]) == 2
    assert capsys.readouterr().err.endswith(f"{averaged} is not a training run's last.pth (no training state); "
                                            "give the copies keep_snapshots.sh made\n")
    assert averaging.main([str(snapshot), "--from", "0", "--out", str(out), "--overwrite"]) == 0
    assert model_from_checkpoint(out)[0] is not None


def test_recomputed_batchnorm_statistics_are_the_plain_mean_over_the_training_batches(averaging):
    config = {"dataset": "synthetic", "dataset_options": {"num_images": 6, "height": 48, "width": 64},
              "crop_size": [32, 48], "scale_range": [0.75, 1.5], "batch_size": 2, "seed": 3}
    model = random_fcn(backbone="vgg16_bn", num_classes=2, width=1 / 32)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen, inputs = [], []
    hooks = [first.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone())),
             model.register_forward_pre_hook(lambda _, args: inputs.append(args[0].shape))]
    assert averaging.recompute_batchnorm(model, config, None) == 3  # 6 images in batches of 2
    for hook in hooks:
        hook.remove()
    # The oracle: the mean over batches of each batch's channel means and unbiased channel variances.
    means = torch.stack([x.mean((0, 2, 3)) for x in seen]).mean(0)
    variances = torch.stack([x.transpose(0, 1).flatten(1).var(1) for x in seen]).mean(0)
    torch.testing.assert_close(first.running_mean, means, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first.running_var, variances, rtol=1e-4, atol=1e-5)
    assert first.momentum == 0.1 and not model.training
    # Augmented as in training: the crops are 32x48 (a whole 48x64 image would be seen otherwise).
    assert inputs == [(2, 3, 32, 48)] * 3


def test_a_file_made_at_out_while_averaging_is_kept_and_a_rerun_replaces_its_own_output(averaging, tmp_path,
                                                                                          capsys, monkeypatch):
    # --out was checked only at the start; whatever appeared there during the averaging (the user's file, or a
    # second average into the same --out) was replaced at the end.
    snapshot = write_snapshot(tmp_path / "s.pth", 500, 1.0)
    out = tmp_path / "avg.pth"
    assert averaging.main([str(snapshot), "--from", "0", "--out", str(out)]) == 0
    assert averaging.main([str(snapshot), "--ema", "0.9", "--out", str(out)]) == 0  # its own earlier output
    average = averaging.average_states

    def average_while_the_user_writes(*args):
        out.write_bytes(b"the user's file, written meanwhile")
        return average(*args)

    monkeypatch.setattr(averaging, "average_states", average_while_the_user_writes)
    capsys.readouterr()
    assert averaging.main([str(snapshot), "--from", "0", "--out", str(out)]) == 2
    assert out.read_bytes() == b"the user's file, written meanwhile"
    assert "was changed by another process while fcnseg average_snapshots ran" in capsys.readouterr().err
