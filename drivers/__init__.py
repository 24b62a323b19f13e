"""Southbound drivers: protocols and device profiles into ReadingBatches, with per-device health."""
