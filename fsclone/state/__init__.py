"""What fsclone keeps between runs, in the private state directory: ``directory`` (its layout
and private files), ``tables`` (a pass record's SQLite schema), ``record`` (the coordinator's
writes), ``queries`` (read-only reads, for status, errors and resumes), ``lock`` (one pass
per target) and ``trees`` (a source tree's last full count)."""
