"""MLVICX on MONAI: self-supervised chest X-ray pretraining, transfer and tracking.

Data flows one way through the subpackages:

``data`` (decode, ingest, manifests, synthetic data) -> ``transforms`` -> ``networks`` / ``losses``
-> ``optim`` -> ``engines`` (training loops and their handlers) -> ``metrics`` -> ``tracking``
(MLflow runs and the model registry).
"""

__version__ = "0.1.0"
