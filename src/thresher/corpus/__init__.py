"""Corpus: readers, tokenizer, the token store, reference tasks and the synthetic world."""
