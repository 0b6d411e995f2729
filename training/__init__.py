"""dmfn.training: datasets, models, losses, the training loop, in-process inference and export
to a Triton repository (torch)."""
