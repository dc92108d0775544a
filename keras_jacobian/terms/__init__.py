"""Distillation terms: each compares one aspect of teacher and student."""
