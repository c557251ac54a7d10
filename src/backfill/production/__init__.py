"""The live production side: its sources (DB, legacy CSV, sidecars), applying a
merge plan, and publishing. Never imports a stage."""
