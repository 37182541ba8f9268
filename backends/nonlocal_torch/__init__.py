"""nonlocal_torch: the non-local block (Wang et al., CVPR 2018) as a native PyTorch module.

Example:
    >>> import torch
    >>> from nonlocal_torch import NonLocal2d
    >>> block = NonLocal2d(64, subsample=True)
    >>> block(torch.randn(2, 64, 16, 16)).shape
    torch.Size([2, 64, 16, 16])
"""

from .attention import AttentionMaps, capture_attention
from .block import NonLocal1d, NonLocal2d, NonLocal3d, NonLocalBlock
from .functional import attention_matrix, nonlocal_attention
from .insert import insert_nonlocal
from .onnx import export_onnx

__all__ = [
    "AttentionMaps",
    "NonLocal1d",
    "NonLocal2d",
    "NonLocal3d",
    "NonLocalBlock",
    "attention_matrix",
    "capture_attention",
    "export_onnx",
    "insert_nonlocal",
    "nonlocal_attention",
]
