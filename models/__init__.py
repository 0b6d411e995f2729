"""Package data: the committed demo model (README.md here says how it was made); found through
:func:`dmfn.resources.demo_checkpoint`."""
