"""The trace error, apart from the schema so that catching it imports neither numpy nor pyarrow."""


class TraceError(ValueError):
    """A trace file or table that does not follow the moesim schema."""
