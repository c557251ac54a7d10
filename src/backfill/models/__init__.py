"""Models: the CLIP encoder, model versions and their predictions, the measures of
agreement, training and comparing versions."""
