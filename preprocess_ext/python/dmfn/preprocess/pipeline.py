"""PLACEHOLDER (being implemented): preprocess_study."""


class PreprocessedStudy:
    pass


def preprocess_study(*args, **kwargs):
    raise NotImplementedError
