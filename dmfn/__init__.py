"""dmfn: mediastinal lesion classification from CT + CTC + clinical facts, served with Triton.

The package is layered; each layer is one top-level folder of the source tree and imports only
the layers below it (docs/architecture.md, tests/test_layering.py):

- ``dmfn.contract`` (``contract/``): what every part agrees on: tensor schema, taxonomy,
  preprocessing parameters, input limits, the wire format, the Study type. NumPy only.
- ``dmfn.client`` (``client/``): DICOM/NIfTI/NRRD loaders, manifests, the Triton SDK and the
  work of ``dmfn predict``. No torch, no C++ extension.
- ``dmfn.preprocess`` (``preprocess_ext/``): the C++ kernels and the preprocessing chain.
- ``dmfn.synth`` (``synth/``): the synthetic cohort generator.
- ``dmfn.serving`` (``serving/``): the Triton repository writer and ``dmfn serve``.
- ``dmfn.evaluation`` (``evaluation/``): the statistics and reports of ``dmfn evaluate``.
- ``dmfn.training`` (``training/``): models, training, in-process inference, export (torch).
- ``dmfn`` itself (``dmfn/``): the ``dmfn`` dispatcher (:data:`dmfn.cli.COMMANDS`), the demo,
  ``dmfn predict``'s command line and the package-data lookup.

Each command is one module holding its parser (``build_parser()``) and ``main(argv)``:
``<layer>/cli.py``, or ``<layer>/<command>_cli.py`` for a layer's second command.
"""

__version__ = "0.1.0"
