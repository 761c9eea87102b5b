"""The JAX-specific parts of the Keras adapter (see :mod:`pdmp.backends.keras._backend`)."""
