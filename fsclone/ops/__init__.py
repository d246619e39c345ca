"""Ops: pure filesystem work on one chunk, returning a Result. They never touch the transport or
the stats sinks."""
