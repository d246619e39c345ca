"""What the CLI shows: the progress line and summary of a pass, ``status``'s views of passes
and their text, item errors."""
