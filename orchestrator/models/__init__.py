"""Model builders: ONNX models made from code, for demos and tests without downloads."""

from orchestrator.models.vit import build_vit, ensure_vit

__all__ = ["build_vit", "ensure_vit"]
