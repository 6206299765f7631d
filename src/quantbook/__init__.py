"""quantbook: the helper package of *Quantizing Transformers with PyTorch*.

Modules are imported on demand (``from quantbook import affine``) so that ``import quantbook``
stays cheap and pulls in neither transformers nor torchao.
"""

__version__ = "0.1.0"
