"""Exceptions raised by simsearch. Every message says what went wrong and what to do."""


class SimsearchError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, mismatch)."""


class BackboneError(SimsearchError):
    """A backbone cannot be created or loaded."""


class ImageError(SimsearchError):
    """An image cannot be read or decoded."""


class IndexFormatError(SimsearchError):
    """A saved index is missing, damaged or does not match what was asked for."""


class IndexLockedError(SimsearchError):
    """Another process is writing to the index."""


class FilterError(SimsearchError):
    """A filter cannot be parsed or does not fit the attributes (unknown name, wrong type, syntax, too large)."""


class SchemaError(SimsearchError):
    """An attribute name, type or value does not fit the schema of an attribute table."""


class CatalogError(SimsearchError):
    """A catalogue file cannot be read: missing key or image column, duplicate keys, mixed column types..."""
