"""Package data: the Triton model templates (``<model>/1/model.py``) and the configs rendered for
the default model. ``dmfn export`` copies the ``model.py`` files into every repository it writes;
found through :func:`dmfn.resources.model_repository_templates`."""
