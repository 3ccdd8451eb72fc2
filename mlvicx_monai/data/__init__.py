"""Data layer: radiograph decoding, dataset adapters, ingestion, manifests and synthetic data."""
