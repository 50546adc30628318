"""The shared training engine: schedule values, checkpoint layout and cadence, resume checks, the
non-finite stop and device selection, as either trainer sees them."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from facepipe.errors import ConfigError, FacepipeError
from facepipe.training.checkpoint import Checkpoints, NonFiniteLoss, latest_checkpoint
from facepipe.training.context import distributed
from facepipe.training.loop import TrainState
from facepipe.training.schedule import lr_factor


def test_warmup_is_linear_then_each_schedule_decays_as_named():
    assert [lr_factor(s, 100, 4, "poly") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 100, 4, "poly") == 1.0 and lr_factor(52, 100, 4, "poly") == pytest.approx(0.25)
    assert lr_factor(52, 100, 4, "cosine") == pytest.approx(0.5) and lr_factor(100, 100, 4, "cosine") == 0.0
    assert lr_factor(99, 100, 4, "constant") == 1.0
    # step: x gamma at each milestone, a fraction of the whole run (warmup included)
    step = [lr_factor(s, 100, 4, "step", milestones=[0.5, 0.8], gamma=0.1) for s in (49, 50, 79, 80)]
    assert step == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_a_time_budget_drives_the_decay_and_cuts_warmup_short():
    # a tenth of the budget ends warmup even if few steps were taken; the decay follows the clock
    assert lr_factor(1, 1000, 100, "cosine", time_fraction=0.05) == pytest.approx(0.5)
    assert lr_factor(1, 1000, 100, "cosine", time_fraction=0.5) == pytest.approx(0.5)
    assert lr_factor(1, 1000, 100, "poly", time_fraction=1.0) == 0.0
    assert lr_factor(1, 1000, 0, "step", time_fraction=0.6, milestones=[0.5], gamma=0.1) == pytest.approx(0.1)


def _ctx(world: int = 1):
    return SimpleNamespace(rank=0, world=world, main=True, device=torch.device("cpu"), barrier=lambda: None)


def test_checkpoints_are_rank_folders_marked_complete_and_the_last_two_kept(tmp_path):
    ckpts = Checkpoints(tmp_path, _ctx(), {"lr": 0.1, "workers": 2}, ("workers",))
    layer = torch.nn.Linear(2, 1)
    assert latest_checkpoint(tmp_path) is None and ckpts.resume({"layer": layer}) is None
    for step in (3, 6, 9):
        torch.nn.init.constant_(layer.weight, float(step))
        ckpts.save({"layer": layer}, TrainState(step=step, history=[{"step": step}]))
    folders = sorted((tmp_path / "checkpoints").iterdir())
    assert [p.name for p in folders] == ["step-000000006", "step-000000009"]
    assert json.loads((folders[-1] / "COMPLETE").read_text()) == {"step": 9, "world_size": 1}
    assert sorted(p.name for p in folders[-1].iterdir()) == ["COMPLETE", "rank0.pt"]
    # a folder without COMPLETE (a rank still writing, or killed) is not a checkpoint
    (tmp_path / "checkpoints" / "step-000000012").mkdir()
    assert latest_checkpoint(tmp_path) == folders[-1]
    # a free key may change; the resume gets this rank's shard and where it stands
    again, fresh = Checkpoints(tmp_path, _ctx(), {"lr": 0.1, "workers": 8}, ("workers",)), torch.nn.Linear(2, 1)
    ckpt = again.resume({"layer": fresh})
    assert torch.equal(fresh.weight, torch.full((1, 2), 9.0)) and again.saved_step == 9
    assert TrainState.from_dict(ckpt["state"]) == TrainState(step=9, history=[{"step": 9}])


def test_resume_is_refused_naming_the_changed_key_or_the_process_count(tmp_path):
    Checkpoints(tmp_path, _ctx(), {"lr": 0.1, "seed": 0}, ()).save({}, TrainState(step=1))
    with pytest.raises(ConfigError, match=r"lr: 0\.1 -> 0\.2.*keys that differ: \['lr'\]"):
        Checkpoints(tmp_path, _ctx(), {"lr": 0.2, "seed": 0}, ()).resume({})
    with pytest.raises(ConfigError, match="written by 1 processes, resuming with 2"):
        Checkpoints(tmp_path, _ctx(world=2), {"lr": 0.1, "seed": 0}, ()).resume({})


def test_a_non_finite_loss_raises_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    ckpts = Checkpoints(tmp_path, _ctx(), {}, ())
    ckpts.check_finite(torch.tensor(1.5), 1, "lower lr")
    with pytest.raises(NonFiniteLoss, match="at step 3; lower lr; .*no checkpoint was written"):
        ckpts.check_finite(torch.tensor(math.nan), 3, "lower lr")
    ckpts.save({}, TrainState(step=4))
    with pytest.raises(FacepipeError, match=r"loss became inf at step 5.*last good checkpoint is .*step-000000004"):
        ckpts.check_finite(torch.tensor(math.inf), 5, "lower lr")


def test_a_single_process_gets_no_process_group_and_cuda_without_a_gpu_is_a_config_error(monkeypatch):
    import torch.distributed as dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed("cpu", deterministic=True, config_name="X") as ctx:
        assert (ctx.rank, ctx.world, ctx.device.type) == (0, 1, "cpu") and ctx.broadcast(0.25) == 0.25
        assert torch.are_deterministic_algorithms_enabled() and not dist.is_initialized()
    assert not torch.are_deterministic_algorithms_enabled()  # the process-wide switch is given back
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"X\.device: 'cuda' requested but no GPU"):
            with distributed("cuda", deterministic=False, config_name="X"):
                pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no CUDA")
def test_auto_device_in_a_container_given_a_gpu_but_without_cuda_fails_clearly(monkeypatch):
    """As in a pod with an nvidia.com/gpu limit (the device plugin sets NVIDIA_VISIBLE_DEVICES) whose
    image has CPU torch: an error naming the cause, not a quiet CPU run holding the GPU."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("FACEPIPE_ALLOW_CPU_TORCH", raising=False)
    monkeypatch.setenv("FACEPIPE_TORCH_VARIANT", "cpu")
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "GPU-3f2a")
    with pytest.raises(ConfigError, match=r"RecognitionTrainConfig\.device: 'auto' in a container with a GPU limit "
                                          r"\(NVIDIA_VISIBLE_DEVICES=GPU-3f2a\).*torch variant cpu.*TORCH_VARIANT=cuda"):
        with distributed("auto", deterministic=False, config_name="RecognitionTrainConfig"):
            pass
    # Asked for at compile time (--allow-cpu-torch-on-gpu), or no GPU given, or device=cpu: CPU.
    for env, device in [({"FACEPIPE_ALLOW_CPU_TORCH": "1"}, "auto"), ({"NVIDIA_VISIBLE_DEVICES": "void"}, "auto"),
                        ({"NVIDIA_VISIBLE_DEVICES": ""}, "auto"), ({}, "cpu")]:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            with distributed(device, deterministic=False, config_name="X") as ctx:
                assert ctx.device.type == "cpu"


def test_finding_5_weights_gone_non_finite_are_never_saved_so_the_last_good_checkpoint_is_finite(tmp_path):
    ckpts, layer = Checkpoints(tmp_path, _ctx(), {}, ()), torch.nn.Linear(2, 1)
    ckpts.save({"layer": layer}, TrainState(step=2))
    torch.nn.init.constant_(layer.weight, math.inf)  # lr=inf: the weights diverge before the loss shows it
    with pytest.raises(NonFiniteLoss, match=r"weights became non-finite by step 3 \(layer\.weight\).*step-000000002"):
        ckpts.save({"layer": layer}, TrainState(step=3))
    good = latest_checkpoint(tmp_path)
    assert good.name == "step-000000002"
    assert torch.isfinite(torch.load(good / "rank0.pt", weights_only=True)["layer"]["weight"]).all()


def test_finding_6_resume_on_other_data_is_refused_before_loading_the_weights(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "label.txt").write_text("# a.jpg\n1 1 4 4\n")
    from facepipe.manifest import content_digest as data_digest

    seen = {"digest": data_digest(data / "label.txt"), "num_classes": 5}
    Checkpoints(tmp_path / "out", _ctx(), {"lr": 0.1}, (), seen).save({"head": torch.nn.Linear(2, 5)},
                                                                       TrainState(step=1))
    (data / "label.txt").write_text("# b.jpg\n1 1 4 4\n")  # same counts, other data
    other = {"digest": data_digest(data / "label.txt"), "num_classes": 7}
    with pytest.raises(ConfigError, match=r"trained on other data \(digest: .*num_classes: 5 -> 7\).*same DATA_PATH"):
        Checkpoints(tmp_path / "out", _ctx(), {"lr": 0.1}, (), other).resume({"head": torch.nn.Linear(2, 7)})


def test_finding_9_a_truncated_checkpoint_marked_complete_is_a_clear_error(tmp_path):
    Checkpoints(tmp_path, _ctx(), {}, ()).save({"layer": torch.nn.Linear(2, 1)}, TrainState(step=1))
    shard = latest_checkpoint(tmp_path) / "rank0.pt"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(ConfigError) as err:
        Checkpoints(tmp_path, _ctx(), {}, ()).resume({"layer": torch.nn.Linear(2, 1)})
    text = str(err.value)
    assert "rank0.pt: not a facepipe checkpoint: truncated or not a torch file" in text and "\n" not in text
    assert "delete" in text and "step-000000001" in text


@pytest.mark.parametrize("kind", ["detector", "recognizer"])
def test_finding_9_garbage_or_foreign_pt_files_give_a_one_line_error(tmp_path, kind):
    import collections

    from facepipe.detection.infer import load_detector_checkpoint
    from facepipe.errors import DataError
    from facepipe.recognition.embed import Recognizer

    load = load_detector_checkpoint if kind == "detector" else Recognizer.load
    (tmp_path / "garbage.pt").write_bytes(b"hello world" * 10)
    torch.save({"x": collections.OrderedDict(a=SimpleNamespace())}, tmp_path / "foreign.pt")  # not weights_only
    torch.save({"kind": kind, "state_dict": {"w": torch.tensor([math.nan])}}, tmp_path / "nan.pt")
    for name, expected in (("garbage", "truncated or not a torch file"), ("foreign", "Python objects beyond tensors"),
                           ("nan", "weights are not finite (w holds NaN")):
        with pytest.raises(DataError) as err:
            load(tmp_path / f"{name}.pt")
        assert f"{name}.pt: not a facepipe" in str(err.value) or name == "nan"
        assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
