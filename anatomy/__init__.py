"""anatomy: dissect Qwen2.5-VL component by component.

>>> import anatomy
>>> specimen = anatomy.load("toy")                 # or "tiny", "7B" (skeleton), a hub id, a directory
>>> prompt = anatomy.encode(specimen, anatomy.demo_image(), "What is in the picture?")
>>> with anatomy.capture(specimen, "vision.blocks.*.output") as cache:
...     specimen.model(**prompt)
>>> cache = anatomy.run(specimen, prompt, "vision.blocks.*.output")     # the same, in one call

The package-level names are the few every notebook starts with: ``load`` a
``Specimen``, ``encode`` a ``Prompt`` (from ``demo_image`` or ``load_image``),
``capture`` or ``run`` into an ``ActivationCache``. Everything else lives in the
folder of the stage it explains: ``overview``, ``vision``, ``decoder``, on the
floor of ``model``, ``processor``, ``inputs``, ``capture`` and ``lab``.
"""

from anatomy.capture import ActivationCache, capture, run
from anatomy.inputs import Prompt, demo_image, encode, load_image
from anatomy.model import PUBLISHED_SIZES, Specimen
from anatomy.sources import load

__all__ = [
    "PUBLISHED_SIZES",
    "ActivationCache",
    "Prompt",
    "Specimen",
    "capture",
    "demo_image",
    "encode",
    "load",
    "load_image",
    "run",
]
