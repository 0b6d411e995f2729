"""dmfn: mediastinal lesion classification from CT + CTC + clinical facts, served with Triton.

The package is layered; each layer is one top-level folder of the source tree and imports only
the layers below it (docs/architecture.md, tests/test_layering.py):

- ``dmfn.contract`` (``contract/``): what every part agrees on: tensor schema, taxonomy,
  preprocessing parameters, input limits, the wire format, the Study type. NumPy only.
- ``dmfn.client`` (``client/``): DICOM/NIfTI/NRRD loaders, manifests, the Triton SDK and
  ``dmfn predict``. No torch, no C++ extension.
- ``dmfn.preprocess`` (``preprocess_ext/``): the C++ kernels and the preprocessing chain.
- ``dmfn.synth`` (``synth/``): the synthetic cohort generator.
- ``dmfn.serving`` (``serving/``): the Triton repository writer and ``dmfn serve``.
- ``dmfn.training`` (``training/``): models, training, evaluation, export (torch).
- ``dmfn`` itself (``dmfn/``): the command line, the demo and the package-data lookup.
"""

__version__ = "0.1.0"
