"""Settings: their types and ranges, Hydra composition, params.yaml, projects."""
