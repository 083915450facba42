"""Bundled demo assets: a synthetic fan recording, its model and config."""
