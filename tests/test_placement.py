"""GPU placement: the pure policy on fake inventories, the need book, and the engine placing, waiting and
releasing on a fake 8-GPU box (no CUDA needed)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import tiny_preset_dict, wait_for
from tests.fake_backend import FakeBackend
from tui_tuner.engine.gpu_inventory import GpuReading, visible_nvml_ids
from tui_tuner.engine.need import NeedBook
from tui_tuner.engine.placement import GpuState, Place, Wait, place
from tui_tuner.preset import Preset, PresetError

G = 1 << 30


def gpu(index: int, total: int = 80, free: int | None = None, foreign: int = 0,
        trials: tuple[tuple[int, int], ...] = ()) -> GpuState:
    used_by_us = sum(r for _, r in trials)
    free = total - foreign - used_by_us if free is None else free
    return GpuState(index, total * G, free * G, foreign * G, tuple((n, r * G) for n, r in trials))


def test_trials_spread_over_empty_gpus_first():
    gpus = [gpu(0, trials=((0, 10),)), gpu(1), gpu(2, trials=((1, 10),))]
    assert place(gpus, 10 * G) == Place(1)


def test_trials_pack_onto_one_gpu_while_they_fit_and_the_cap_allows():
    gpus = [gpu(0, trials=((0, 20), (1, 20), (2, 20)))]  # 20 G left
    assert place(gpus, 20 * G) == Place(0)
    assert place(gpus, 20 * G, trials_per_gpu=3) == Wait(20 * G, 0, None, capped=True)


def test_a_trial_that_fits_nowhere_waits_with_what_it_needs_and_the_most_free():
    gpus = [gpu(0, total=24, trials=((0, 20),)), gpu(1, total=24, foreign=16)]
    got = place(gpus, 12 * G)
    assert got == Wait(12 * G, 8 * G, 1)
    assert got.reason == "waiting for GPU memory: needs 12.0G, most free 8.00G on cuda:1"


def test_foreign_processes_memory_is_not_ours_to_use():
    # GPU 0 looks emptiest by total, but another process holds 70 G of it.
    gpus = [gpu(0, foreign=70), gpu(1, total=40)]
    assert place(gpus, 20 * G) == Place(1)
    assert place(gpus, 45 * G) == Wait(45 * G, 40 * G, 1)


def test_a_trial_that_has_not_allocated_yet_still_holds_its_reservation():
    # The driver still says 80 G free, but trial 0 was promised 50 G on it a moment ago.
    starting = GpuState(0, 80 * G, 80 * G, 0, ((0, 50 * G),))
    assert starting.available == 30 * G
    assert isinstance(place([starting], 40 * G), Wait)
    # And the driver's free wins when a trial uses more than it was promised.
    grown = GpuState(0, 80 * G, 10 * G, 0, ((0, 50 * G),))
    assert grown.available == 10 * G


def test_a_fork_lands_where_there_is_room_not_on_its_parents_gpu():
    parent_gpu = gpu(0, total=40, trials=((3, 30),))  # the parent still runs there
    gpus = [parent_gpu, gpu(1, total=40, trials=((4, 5),))]
    assert place(gpus, 30 * G) == Place(1)  # the child (same need as its parent)


def test_eight_gpus_mixed_free_and_foreign():
    gpus = [gpu(0, foreign=75), gpu(1, trials=((0, 30),)), gpu(2, total=24), gpu(3, foreign=40),
            gpu(4, trials=((1, 30), (2, 30))), gpu(5, free=35), gpu(6, total=24, foreign=20), gpu(7, total=40)]
    # Available: 5, 50, 24, 40, 20, 35, 4, 40: the most is GPU 1.
    assert place(gpus, 30 * G) == Place(1)
    assert place(gpus, 45 * G) == Place(1)
    assert place(gpus, 51 * G) == Wait(51 * G, 50 * G, 1)
    assert place(gpus, 30 * G, trials_per_gpu=1) == Place(3)  # the tie 3/7 (40 G) goes to the lower index


def test_the_need_is_the_measured_peak_else_the_estimate_and_an_oom_raises_it():
    book, key, other = NeedBook(), ("m", "lora", "adamw", 8, 512), ("m", "lora", "adamw", 4, 512)
    assert book.need(key, lambda: 10 * G) == 10 * G
    book.measured(key, 4 * G)
    assert book.need(key, lambda: 10 * G) == round(4 * G * 1.1)  # measured, with a margin
    book.oom(key, allowed=round(4 * G * 1.1))
    assert book.need(key, lambda: 10 * G) == 10 * G  # the measured peak is dropped: the estimate is back
    raised = book.need(key, lambda: 5 * G)
    assert raised == round(round(4 * G * 1.1) * 1.5)  # above the estimate: the OOM's floor
    book.measured(key, 2 * G)  # a smaller peak measured later never takes it below the OOM's floor
    assert book.need(key, lambda: 1) == raised
    assert book.need(other, lambda: 3 * G) == 3 * G  # another configuration is untouched
    # The raised need changes where the next trial like it goes.
    gpus = [gpu(0, total=16, free=5), gpu(1, total=16, free=6)]
    assert place(gpus, round(4 * G * 1.1)) == Place(1)
    assert isinstance(place(gpus, raised), Wait)


def test_cuda_visible_devices_is_read_as_cuda_reads_it():
    assert visible_nvml_ids(None, 4) == [0, 1, 2, 3]
    assert visible_nvml_ids("2,0", 4) == [2, 0]  # torch's cuda:0 is NVML's GPU 2
    assert visible_nvml_ids("", 4) == []
    assert visible_nvml_ids("1,7,2", 4) == [1]  # an invalid entry ends the list
    assert visible_nvml_ids("GPU-abc,3", 4) == ["GPU-abc", 3]


def test_device_gpus_on_a_machine_without_cuda_is_one_line_naming_the_field(tmp_path):
    from tui_tuner.engine.backend import TorchBackend

    preset = Preset.from_dict(tiny_preset_dict(device={"gpus": [0, 1]}))
    with pytest.raises(ValueError) as e:
        TorchBackend().prepare(preset)
    assert str(e.value).startswith("device.gpus = [0, 1] but no CUDA device is available") and "\n" not in str(e.value)
    with pytest.raises(PresetError, match=r"device.*gpus is set but device\.type = 'cpu'"):
        Preset.from_dict(tiny_preset_dict(device={"gpus": "all", "type": "cpu"}))


class FakeInventory:
    """8 GPUs, mixed: four empty 80 G, two 80 G mostly held by another process, two empty 24 G."""

    def __init__(self) -> None:
        self.gpus = [GpuReading(i, 80 * G, 80 * G, 0) for i in range(4)]
        self.gpus += [GpuReading(i, 80 * G, 5 * G, 75 * G) for i in (4, 5)]
        self.gpus += [GpuReading(i, 24 * G, 24 * G, 0) for i in (6, 7)]
        self.reads = 0

    def read(self) -> list[GpuReading]:
        self.reads += 1
        return list(self.gpus)


def test_the_engine_places_waits_and_releases_on_a_fake_8_gpu_box(tmp_path):
    from tui_tuner.engine.sweep import Sweep

    backend = FakeBackend(step_s=0.001, gpus=8, need=30 * G)
    backend.gate.clear()  # every trial holds its GPU until released
    raw = tiny_preset_dict(study={"n_trials": 10, "concurrency": 10, "pruner": "none"},
                           params={"max_steps": 5, "eval_interval": 5})
    inventory = FakeInventory()
    sweep = Sweep(Preset.from_dict(raw), tmp_path / "run", backend=backend, inventory=inventory)
    try:
        sweep.start()
        # Room for 2 x 30 G on each empty 80 G GPU (0-3); none on 4-5 (foreign) or 6-7 (24 G).
        wait_for(lambda: sum(t.state == "running" for t in sweep.trials()) == 8, 30, "8 trials placed")
        wait_for(lambda: sum(t.wait_reason is not None for t in sweep.trials()) == 1, 10, "the 9th waits")
        trials = sweep.trials()
        running = [t for t in trials if t.state == "running"]
        assert Counter(t.device for t in running) == {f"cuda:{i}": 2 for i in range(4)}
        assert sorted(t.device for t in running[:4]) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]  # spread first
        waiting = next(t for t in trials if t.wait_reason)
        assert waiting.state == "waiting" and waiting.need_bytes == 30 * G
        assert waiting.wait_reason == "waiting for GPU memory: needs 30.0G, most free 24.0G on cuda:6"
        assert sum(t.state == "waiting" for t in trials) == 1  # nothing is asked behind the one in line
        snap = sweep.snapshot()
        assert [g.index for g in snap.gpus] == list(range(8))
        assert sorted(snap.gpus[0].trials) == sorted(t.number for t in running if t.device == "cuda:0")
        assert snap.gpus[0].free == 20 * G and snap.gpus[4].free == 5 * G and snap.gpus[4].foreign == 75 * G
        assert any(e.kind == "gpu_wait" and e.trial == waiting.number for e in sweep.events_since(0))
        reads = inventory.reads
        wait_for(lambda: inventory.reads > reads, 5, "the waiting trial's periodic re-check")
        backend.gate.set()  # the trials end and free their GPUs: the waiting ones start
        assert sweep.wait(60)
        done = sweep.trials()
        assert [t.state for t in done] == ["complete"] * 10
        assert all(t.wait_reason is None and t.device.startswith("cuda:") for t in done)
        assert all(t.device in {f"cuda:{i}" for i in range(4)} for t in done)
    finally:
        sweep.stop(timeout=30)


def test_cpu_machines_place_nothing(tmp_path):
    from tui_tuner.engine.sweep import Sweep

    sweep = Sweep(Preset.from_dict(tiny_preset_dict(params={"max_steps": 3})), tmp_path / "run",
                  backend=FakeBackend())
    try:
        sweep.start()
        assert sweep.wait(30)
        assert sweep.gpu_pool is None and sweep.snapshot().gpus == ()
        assert all(t.device == "cpu" and t.need_bytes is None for t in sweep.trials())
    finally:
        sweep.stop(timeout=30)


def test_the_estimate_from_the_config_covers_what_a_trial_holds_and_grows_with_the_batch():
    from tui_tuner.params import TrialParams
    from tui_tuner.preset import DataSection
    from tui_tuner.training.finetune import FineTune, prepare_data
    from tui_tuner.training.memory_estimate import estimate_bytes

    params = TrialParams(max_steps=2, batch_size=8, lora_r=4)
    _, data = prepare_data("builtin:tiny-llama", DataSection(train="builtin:progressions", max_length=40))
    ft = FineTune("builtin:tiny-llama", "lora", params, data, "cpu")
    ft.step()
    small = estimate_bytes("builtin:tiny-llama", "lora", params, 40, 8)
    assert small > ft.own_bytes()
    assert estimate_bytes("builtin:tiny-llama", "lora", params, 40, 16) > small
    assert estimate_bytes("builtin:tiny-llama", "full", params, 40, 8) > small  # every weight trains
    ft.close()


def test_without_nvml_placement_reads_torchs_view_of_free_memory(monkeypatch):
    import pynvml
    import torch

    from tui_tuner.engine.gpu_inventory import TorchInventory, default_inventory

    def no_nvml() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_nvml)
    inventory = default_inventory(lambda i: 0)
    assert isinstance(inventory, TorchInventory)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: ((10 * G, 80 * G), (70 * G, 80 * G))[i])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: (20 * G, 0)[i])
    assert inventory.read() == [GpuReading(0, 80 * G, 10 * G, 50 * G), GpuReading(1, 80 * G, 70 * G, 10 * G)]
