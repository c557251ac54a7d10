"""The person's decision DB: the v3 plan's v3 schema and the format of each of its cells."""
