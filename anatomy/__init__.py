"""anatomy: dissect Qwen2.5-VL component by component.

>>> import anatomy
>>> spec = anatomy.load("toy")                        # or "tiny", "7B" (skeleton), a hub id, a directory
>>> batch = anatomy.encode(spec, anatomy.demo_image(), "What is in the picture?")
>>> with anatomy.capture(spec, "vision.blocks.*.output") as cache:
...     spec.model(**batch)
"""

from anatomy.activations import ActivationCache, capture
from anatomy.inputs import demo_image, encode, load_image
from anatomy.processor import offline_processor
from anatomy.sources import PUBLISHED_SIZES, Specimen, load

__all__ = [
    "PUBLISHED_SIZES",
    "ActivationCache",
    "Specimen",
    "capture",
    "demo_image",
    "encode",
    "load",
    "load_image",
    "offline_processor",
]
