"""The pipeline's stages, exactly dvc.yaml's: each reads its inputs, calls its pure
core and writes its outputs (`run(project)`). The wiring is backfill.pipeline."""
