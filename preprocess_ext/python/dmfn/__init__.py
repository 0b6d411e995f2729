"""dmfn: mediastinal lesion classification from CT + CTC + clinical facts, served with Triton.

Sub-packages: ``dmfn.preprocess`` (C++ kernels and the preprocessing chain), ``dmfn.client``
(Study, loaders, tensor schema, Triton SDK; no torch) and ``dmfn.training`` (torch).
"""

__version__ = "0.1.0"
