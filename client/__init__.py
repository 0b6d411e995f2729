"""dmfn.client: the DICOM/NIfTI/NRRD loaders, the manifest reader, the Triton SDK (sync and
asyncio) and ``dmfn predict``'s work. The Study type and the tensor schema are in
:mod:`dmfn.contract`.

Nothing in this package imports torch.
"""
