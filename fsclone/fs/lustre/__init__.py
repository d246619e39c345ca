"""Lustre: file layouts (``lustre.lov``), the internal xattrs never copied, and the create path
that sets a layout before any data. Pure logic and injected OS calls, so all of it is tested
without a Lustre."""
