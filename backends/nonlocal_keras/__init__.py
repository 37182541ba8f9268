"""nonlocal_keras: the non-local block as a Keras 3 layer (TensorFlow, JAX or PyTorch).

Example:
    >>> import keras
    >>> from nonlocal_keras import NonLocalBlock
    >>> x = keras.Input((16, 16, 64))
    >>> model = keras.Model(x, NonLocalBlock(subsample=True)(x))
    >>> model.output_shape
    (None, 16, 16, 64)
"""

from .attention import AttentionMaps, capture_attention
from .insert import insert_nonlocal
from .layer import NonLocalBlock

__all__ = ["AttentionMaps", "NonLocalBlock", "capture_attention", "insert_nonlocal"]
