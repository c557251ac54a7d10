"""Helpers shared by several test modules: builders of rows, projects and odd files."""
