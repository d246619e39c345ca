"""Coordinator and worker loops: termination by counting, retries, phases."""
