"""dmfn.evaluation: the statistics clinicians expect, equal to R pROC, and the reports of
``dmfn evaluate``. NumPy, SciPy and matplotlib; no torch.

- :mod:`.metrics`: AUC definitions (Mann-Whitney, macro one-vs-rest, Hand & Till), accuracy.
- :mod:`.roc`: ROC curves, DeLong variance and confidence intervals, DeLong tests, bootstrap.
- :mod:`.proportions`: sensitivity, specificity, PPV, NPV, accuracy with Wilson or
  Clopper-Pearson intervals; the Youden threshold; McNemar's test.
- :mod:`.predictions`: the predictions CSV (``dmfn predict`` / ``dmfn train``) and readers' calls.
- :mod:`.report`: ``dmfn evaluate``'s metrics.json, figures and HTML report.
"""
