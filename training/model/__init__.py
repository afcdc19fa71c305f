"""YOLO11 network: blocks, heads and the builder that maps a preset to them."""
from training.model.yolo import YOLO, build_model

__all__ = ["YOLO", "build_model"]
