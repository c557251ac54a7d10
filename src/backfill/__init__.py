"""backfill: rebuild AI-training decision databases from curated image folders."""
