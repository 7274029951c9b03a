"""Several GPUs per task, as far as a CPU can show it: two gloo ranks on tiny models.

What runs here: the worker's GPU group (``CUDA_VISIBLE_DEVICES``), the second rank's
process, the ``torch.distributed`` group, each call sent to both ranks, diffusers'
Ulysses context parallelism on the Wan transformer (native attention, all-to-all over
gloo), a cancel agreed at a step.  What a CPU cannot show: NCCL, ring attention (it
needs a kernel that returns the log-sum-exp: cuDNN or flash attention), the speed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy
import pytest

from omniflash.contract import Mode
from omniflash.engines import create_engine
from omniflash.engines.diffusion import DiffusersEngine, Inputs
from omniflash.engines.diffusion.devices import pin_gpus
from omniflash.errors import TaskCancelled
from omniflash.settings import Settings
from tests.engines.diffusion.tiny_inputs import make_job, solid
from tests.engines.diffusion.tiny_models import recipes_toml

pytestmark = pytest.mark.diffusers


def test_each_worker_takes_its_own_gpus(tmp_path: Path) -> None:
    gpus = tmp_path / "gpus"
    for i in range(8):
        (gpus / f"0000:{i + 16:02x}:00.0").mkdir(parents=True)
    env: dict[str, str] = {}
    assert pin_gpus(1, 4, env, gpus) == ["4", "5", "6", "7"]
    assert env == {"CUDA_VISIBLE_DEVICES": "4,5,6,7", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert pin_gpus(3, 1, {}, gpus) == ["3"]
    assert pin_gpus(9, 2, {}, gpus) == ["2", "3"], "round robin over the 4 groups"
    # The operator's own list is the one to share out.
    env = {"CUDA_VISIBLE_DEVICES": "3,5,7"}
    assert pin_gpus(1, 1, env, gpus) == ["5"] and env["CUDA_VISIBLE_DEVICES"] == "5"
    assert pin_gpus(0, 2, {}, tmp_path / "no-driver") is None
    with pytest.raises(ValueError, match=r"gpus_per_task = 4, but only 3 GPU\(s\)"):
        pin_gpus(0, 4, {"CUDA_VISIBLE_DEVICES": "0,1,2"}, gpus)


def engine_with(text: str, root: Path) -> DiffusersEngine:
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipes.toml").write_text(text)
    engine = create_engine("diffusers", Settings(recipes_path=root / "recipes.toml", workers=1))
    assert isinstance(engine, DiffusersEngine)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def engines(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DiffusersEngine, DiffusersEngine]]:
    root = tmp_path_factory.mktemp("ranks")
    single = engine_with(recipes_toml(tiny_models), root / "one")
    ranked = engine_with("gpus_per_task = 2\n" + recipes_toml(tiny_models), root / "two")
    try:
        yield single, ranked
    finally:
        ranked.close()


@pytest.mark.parametrize(("recipe", "split"), [("t2v", True), ("i2v", True), ("vace", False)])
def test_two_ranks_make_the_frames_of_one(
    engines: tuple[DiffusersEngine, DiffusersEngine], recipe: str, split: bool
) -> None:
    single, ranked = engines
    inputs = Inputs(first_frame=solid((200, 40, 40), (64, 48))) if recipe != "t2v" else Inputs()
    runs = [
        numpy.stack(
            e.run_pipeline(e.book.recipes[recipe], "a fox", (64, 48, 9), inputs, 4, None, None)
        )
        for e in (single, ranked)
    ]
    assert int(numpy.abs(runs[0].astype(int) - runs[1].astype(int)).max()) <= 1
    transformer = ranked.loader.pipes[recipe].transformer
    # Wan's transformer is split over the ranks; VACE's has no plan in diffusers.
    assert (transformer._parallel_config is not None) is split
    assert ranked.group is not None and len(ranked.group.procs) == 1


def test_a_cancel_stops_every_rank_at_the_same_step(
    engines: tuple[DiffusersEngine, DiffusersEngine], tmp_path: Path
) -> None:
    _, ranked = engines
    seen: list[float] = []
    job = make_job(tmp_path, Mode.TEXT, duration=1)
    with pytest.raises(TaskCancelled):
        ranked.generate(job, seen.append, lambda: len(seen) >= 1)
    assert len(seen) == 1
    # Both ranks stopped where rank 0 did: the next task runs in step.
    result = ranked.generate(
        make_job(tmp_path, Mode.TEXT, duration=1, name="b"), seen.append, lambda: False
    )
    assert result.frames == 24


def test_the_engine_chooses_its_gpus_before_torch_starts() -> None:
    """Built as a worker builds it, the engine has not imported torch: ``load`` can still
    narrow ``CUDA_VISIBLE_DEVICES`` before CUDA reads it."""
    code = (
        "import sys\n"
        "from omniflash.engines import create_engine\n"
        "from omniflash.settings import Settings\n"
        "engine = create_engine('diffusers', Settings(worker_index=1))\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_an_input_every_rank_refuses_fails_the_call_not_the_group(
    engines: tuple[DiffusersEngine, DiffusersEngine],
) -> None:
    _, ranked = engines
    recipe = ranked.book.recipes["t2v"]
    # A width that is not a multiple of 16: every rank's pipeline refuses it at once.
    with pytest.raises(ValueError, match="divisible by 16"):
        ranked.run_pipeline(recipe, "a fox", (56, 48, 9), Inputs(), 1, None, None)
    frames = ranked.run_pipeline(recipe, "a fox", (64, 48, 9), Inputs(), 1, None, None)
    assert len(frames) == 9, "the ranks are still in step"
