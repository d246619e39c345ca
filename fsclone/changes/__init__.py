"""Change-driven sync: feeds of filesystem changes, reduced to the directories they dirty."""
