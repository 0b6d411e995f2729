"""dmfn.contract: what every part of dmfn agrees on, importable without torch, without the C++
extension and without any other layer (NumPy only).

- :mod:`.schema`: tensor names, dtypes and shapes of the serving path; the CLINICAL and
  MEASUREMENTS layouts.
- :mod:`.taxonomy`: the lesion classes (a data file), their groups and management.
- :mod:`.params`: :class:`~dmfn.contract.params.PreprocessParams`, stored with every model.
- :mod:`.study`, :mod:`.orientation`, :mod:`.roi`: the Study type, its geometry, the lesion box.
- :mod:`.wire`: one study as the request tensors, and back.
- :mod:`.limits`: the plausible request values a served model accepts.
- :mod:`.server`: what the server publishes to clients (ROI margin, CTC names, classes, limits).
- :mod:`.errors`: :class:`~dmfn.contract.errors.InvalidInput`, the error of every boundary.
- :mod:`.outfile`: result files written whole or not at all, never over an earlier one unasked.
"""
