from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from heygem.errors import NoFaceFound
from heygem.face.geometry import CropSpec
from heygem.face.template import plan_template

SPEC = CropSpec("lowerface", 192)


def test_plan_finds_the_face_in_every_frame(template_mp4: Path, tmp_path: Path) -> None:
    plan = plan_template(template_mp4, 480, 360, SPEC, cache_dir=tmp_path, max_frames=1000)
    assert plan.n_frames == 50 and plan.valid.all()
    crops = np.load(plan.crops_path, mmap_mode="r")
    assert crops.shape == (50, 192, 192, 3)
    x0, y0, x1, y1 = plan.regions[0]
    assert x0 % 2 == y0 % 2 == 0 and 170 < (x0 + x1) / 2 < 250 and 120 < (y0 + y1) / 2 < 180


def test_second_plan_is_a_cache_hit_and_concurrent_plans_agree(
    template_mp4: Path, tmp_path: Path
) -> None:
    def plan() -> np.ndarray:
        return plan_template(
            template_mp4, 480, 360, SPEC, cache_dir=tmp_path, max_frames=1000
        ).regions

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: plan(), range(3)))
    assert all(np.array_equal(results[0], r) for r in results)
    again = plan_template(template_mp4, 480, 360, SPEC, cache_dir=tmp_path, max_frames=1000)
    assert again.from_cache and np.array_equal(again.regions, results[0])
    assert not list(tmp_path.rglob("*.part"))


def test_damaged_cache_entry_is_rebuilt(template_mp4: Path, tmp_path: Path) -> None:
    plan_template(template_mp4, 480, 360, SPEC, cache_dir=tmp_path, max_frames=1000)
    for npy in tmp_path.rglob("crops-*.npy"):
        npy.write_bytes(b"damaged")
    plan = plan_template(template_mp4, 480, 360, SPEC, cache_dir=tmp_path, max_frames=1000)
    assert not plan.from_cache and plan.valid.all()


def test_no_face_anywhere_is_a_clear_error(faceless_mp4: Path, tmp_path: Path) -> None:
    with pytest.raises(NoFaceFound, match="no face was found in any of the 10 frames"):
        plan_template(faceless_mp4, 320, 240, SPEC, cache_dir=tmp_path, max_frames=1000)
