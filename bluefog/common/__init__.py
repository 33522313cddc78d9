"""Shared, framework-independent parts of bluefog (topology utilities and helpers)."""
