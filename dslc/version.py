"""dslc's version: a leaf module, so code generators can stamp it without importing the API."""
__version__ = "0.1.0"
