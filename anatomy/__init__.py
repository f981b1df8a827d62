"""anatomy: dissect Qwen2.5-VL component by component."""

from anatomy.processor import offline_processor
from anatomy.sources import PUBLISHED_SIZES, Specimen, load

__all__ = ["PUBLISHED_SIZES", "Specimen", "load", "offline_processor"]
