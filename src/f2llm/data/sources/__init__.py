"""Corpus sources: each turns its files into the one corpus format that training reads."""
