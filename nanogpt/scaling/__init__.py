"""Scaling-law studies: collect a sweep's runs, fit Chinchilla's approaches, plot."""
