"""Registering projects: one at a time, or many past ones discovered under a root."""
