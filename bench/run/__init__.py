"""``bench run``: a matrix of models × backends × options × scenarios, written to ``reports/<run-id>/``."""
