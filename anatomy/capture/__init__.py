"""Capture what flows through Qwen2.5-VL: site names, hooks, the cache, and the orders of vision tokens.

>>> with capture(specimen, "vision.blocks.*.output") as cache:      # hooks live inside the block only
...     specimen.model(**prompt)
>>> cache = run(specimen, prompt, "vision.blocks.*.output")          # the same in one call

- ``sites``: the short names (``vision.patch_embed``, ``decoder.layers.{i}.output``...) and their modules.
- ``hooks``: ``capture`` and ``run``.
- ``cache``: ``ActivationCache``, vision sites in raster order by default.
- ``orders``: the only owner of the raster, processor, window and merge orders.
"""

from anatomy.capture.cache import ActivationCache
from anatomy.capture.hooks import capture, run

__all__ = ["ActivationCache", "capture", "run"]
