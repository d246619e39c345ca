"""Counters that merge by addition, and the sinks that publish them."""
