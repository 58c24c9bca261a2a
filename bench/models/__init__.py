"""The model registry (models.yaml) and the derivation of checkpoints from the bundled model."""
