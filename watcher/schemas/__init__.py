"""Versioned JSON Schemas shipped inside the package and their validators."""
