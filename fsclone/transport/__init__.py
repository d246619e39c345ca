"""Transports move chunks from the coordinator to workers and results back.

Only modules in this package import pika or mpi4py.
"""
