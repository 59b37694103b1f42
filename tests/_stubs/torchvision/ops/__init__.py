"""Stub of ``torchvision.ops`` (see ``tests/_stubs/torchvision/__init__.py``)."""
