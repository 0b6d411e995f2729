"""dmfn.client: the Study type, DICOM/NIfTI/NRRD loaders, the tensor schema and the Triton SDK.

Nothing in this package imports torch.
"""
