"""Exact stride-1 OP-convNet inference over whole CT volumes."""
