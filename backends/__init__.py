"""Framework adapters, importable as ``pdmp.backends.torch`` and ``pdmp.backends.keras``.

Nothing here is imported by ``import pdmp``; each adapter imports its framework when it is imported.
"""
