"""dmfn.training: synthetic cohort, datasets, models, losses, training, evaluation and export (torch)."""
