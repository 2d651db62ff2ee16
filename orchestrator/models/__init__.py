"""Model builders: ONNX models made from code, for demos and tests without downloads."""

from .vit import build_vit, ensure_vit

__all__ = ["build_vit", "ensure_vit"]
