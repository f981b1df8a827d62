"""Shared by the causal tests: small pictures with a box painted out."""

import numpy as np
import pytest

from anatomy.inputs import demo_image


@pytest.fixture(scope="session")
def painted():
    """``painted(height, width, box)``: the demo picture as an (H, W, 3) uint8 array (default 56 x 84 px, 2 x 3
    cells), with ``box`` = (top, bottom, left, right) painted black."""
    def draw(height: int = 56, width: int = 84, box=None) -> np.ndarray:
        pixels = np.array(demo_image(height, width))
        if box is not None:
            top, bottom, left, right = box
            pixels[top:bottom, left:right] = 0
        return pixels
    return draw
