"""Shared test fixtures: synthetic image trees and the location of the shared real assets."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def image_tree(tmp_path):
    """Factory writing a class-per-folder tree of small synthetic images under tmp_path; returns its root.

    `image_tree({"cat": 4, "dog": 3}, root="data/train", ext=".png")` writes data/train/cat/img_000.png, ...
    Each class has its own base colour and image sizes vary (24..63 px a side), so labels and crops both matter.
    """

    def make(classes, root="images", ext=".jpg", seed=0):
        base = tmp_path / root
        rng = np.random.default_rng(seed)
        for k, (name, n) in enumerate(sorted(classes.items())):
            (base / name).mkdir(parents=True, exist_ok=True)
            colour = np.array([(70 * k) % 256, 255 - (50 * k) % 256, 128])
            for i in range(n):
                h, w = rng.integers(24, 64, size=2)
                pixels = np.clip(colour + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(base / name / f"img_{i:03d}{ext}")
        return base

    return make


@pytest.fixture(scope="session")
def shared_assets():
    """The shared real assets (weights/, data/): $TINYTL_ASSETS, else ../shared/assets from the project root.
    Skips the test, saying why, when they are absent (they are never vendored whole)."""
    path = Path(os.environ.get("TINYTL_ASSETS") or Path(__file__).resolve().parents[2] / "shared" / "assets")
    if not path.is_dir():
        pytest.skip(f"shared assets not found at {path} (set TINYTL_ASSETS to their folder)")
    return path
