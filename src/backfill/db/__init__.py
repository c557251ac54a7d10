"""The person's decision DB: seed 003's v3 schema and the format of each of its cells."""
