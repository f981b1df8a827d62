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

from __future__ import annotations

import importlib
import sys
import types

_HOMES = {  # package-level name -> the module it lives in, imported on first use (PEP 562)
    "ActivationCache": "anatomy.capture",
    "capture": "anatomy.capture",
    "run": "anatomy.capture",
    "Prompt": "anatomy.inputs",
    "demo_image": "anatomy.inputs",
    "encode": "anatomy.inputs",
    "load_image": "anatomy.inputs",
    "PUBLISHED_SIZES": "anatomy.model",
    "Specimen": "anatomy.model",
    "load": "anatomy.sources",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    """The names above, imported when first asked for: ``python -m anatomy.processes`` or ``anatomy.browser``
    (the test suite's own tools, standard library only) then start without torch and transformers."""
    if name not in _HOMES:
        raise AttributeError(f"module 'anatomy' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    object.__setattr__(sys.modules[__name__], name, value)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


class _Package(types.ModuleType):
    """``anatomy.capture`` is the function ``capture``, as it was when this file imported it eagerly: importing
    the subpackage ``anatomy.capture`` must not rebind the package's name to the subpackage."""

    def __setattr__(self, name: str, value) -> None:
        if name == "capture" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
