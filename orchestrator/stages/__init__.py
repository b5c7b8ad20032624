"""Compression stages: plain torch, no Ray Tune or MLflow (distill alone knows Ray Train)."""
