"""Jinja2 templates (autoescaped) and the helper that renders them (``render``)."""
