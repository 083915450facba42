"""Training, datasets and evaluation. Imports TensorFlow lazily; never imported by the daemon."""
