"""The person's decision DB: the v3 plan's schema and the format of each of its cells."""
