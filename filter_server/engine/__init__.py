"""A compiled policy classifying one message (`compiled`)."""
