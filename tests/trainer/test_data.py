"""Samplers, image folders and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers.optimization import get_scheduler

from unlearning_trainer.data.images import load_images
from unlearning_trainer.data.sampling import InfiniteSampler, generator_for
from unlearning_trainer.data.sources import open_source
from unlearning_trainer.errors import DataError
from unlearning_trainer.scenarios import builders
from unlearning_trainer.training import checkpoints


def test_sampler_is_a_pure_function_of_seed_and_position():
    a, b = InfiniteSampler(10, seed=3), InfiniteSampler(10, seed=3)
    assert torch.equal(a.indices(7, 25), b.indices(7, 25))
    assert not torch.equal(a.indices(0, 10), InfiniteSampler(10, seed=4).indices(0, 10))


def test_every_epoch_is_a_permutation():
    sampler = InfiniteSampler(7, seed=0)
    for epoch in range(3):
        assert sorted(sampler.indices(epoch * 7, 7).tolist()) == list(range(7))


def test_ranks_split_the_global_batch_exactly():
    sampler = InfiniteSampler(13, seed=1)
    whole = sampler.micro_batch(5, 8)
    halves = [sampler.micro_batch(5, 8, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat(halves), whole)


def test_generators_differ_by_key_and_repeat_by_key():
    draw = [torch.rand(3, generator=generator_for(0, k)) for k in (1, 1, 2)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])


def test_image_folder_reads_captions_and_digests(tmp_path):
    builders.write_image_folder(np.stack([np.full((4, 4), v, np.uint8) for v in (0, 255, 255)]), tmp_path)
    rows = [{"file_name": "img-00000.png", "text": "dark"}, {"file_name": "img-00001.png", "text": "bright"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    images = load_images(open_source(tmp_path, field="spec.data.forget.uri"), (1, 4, 4))
    assert len(images) == 3 and images.captions == ["dark", "bright", ""]
    assert images.take(torch.tensor([0, 1]))[0].flatten().unique().tolist() == [-1.0, 1.0]
    assert len(images.unique()) == 2 and images.digests[1] == images.digests[2]


def test_image_folder_converts_rgb_for_a_one_channel_model(tmp_path):
    builders.write_image_folder(np.zeros((2, 4, 4, 3), np.uint8), tmp_path)
    assert load_images(open_source(tmp_path, field="f"), (1, 4, 4)).pixels.shape == (2, 1, 4, 4)


def test_metadata_rows_need_a_file_name(tmp_path):
    builders.write_image_folder(np.zeros((1, 4, 4), np.uint8), tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"text": "no name"}\n')
    with pytest.raises(DataError, match="file_name"):
        open_source(tmp_path, field="f")


def _model_and_optimizer(seed: int, steps: int = 1):
    unet = builders.tiny_unet(sample_size=8, block_out_channels=(8, 16), seed=seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=20)
    for _ in range(steps):
        unet(torch.randn(2, 1, 8, 8), torch.tensor([1, 2])).sample.sum().backward()
        optimizer.step()
        scheduler.step()
    return unet, optimizer, scheduler


def test_checkpoint_round_trip_and_rotation(tmp_path):
    unet, optimizer, scheduler = _model_and_optimizer(0, steps=5)
    for step in (2, 4, 6):
        state = checkpoints.TrainingState(step=step, cached_forget_scale=0.5, history=[{"step": 0}])
        checkpoints.save(tmp_path, unet, optimizer, scheduler, state, keep=2)
    assert [step for step, _ in checkpoints.list_checkpoints(tmp_path)] == [4, 6]
    restored, restored_optimizer, restored_scheduler = _model_and_optimizer(1)
    state = checkpoints.load_latest(tmp_path, restored, restored_optimizer, restored_scheduler)
    assert state.step == 6 and state.cached_forget_scale == 0.5 and state.history == [{"step": 0}]
    for key, value in unet.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key])
    assert restored_optimizer.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert restored_scheduler.last_epoch == scheduler.last_epoch == 5
    scheduler.step()
    restored_scheduler.step()
    assert restored_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_checkpoints_from_before_lr_schedules_resume_the_schedule_at_their_step(tmp_path):
    unet, optimizer, scheduler = _model_and_optimizer(0, steps=5)
    folder = checkpoints.save(tmp_path, unet, optimizer, scheduler, checkpoints.TrainingState(step=5), keep=1)
    state = json.loads((folder / "state.json").read_text())
    del state["scheduler"]
    (folder / "state.json").write_text(json.dumps(state))
    restored, restored_optimizer, restored_scheduler = _model_and_optimizer(1, steps=0)
    checkpoints.load_latest(tmp_path, restored, restored_optimizer, restored_scheduler)
    assert restored_scheduler.last_epoch == 5
    assert restored_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_checkpoint_loading_refuses_arbitrary_pickles(tmp_path):
    unet, optimizer, scheduler = _model_and_optimizer(0)
    folder = checkpoints.save(tmp_path, unet, optimizer, scheduler, checkpoints.TrainingState(step=1), keep=1)
    torch.save({"payload": _Exploit()}, folder / "optimizer.pt")
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        checkpoints.load_latest(tmp_path, unet, optimizer, scheduler)


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))
